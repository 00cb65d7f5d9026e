import array
from collections.abc import Buffer

def hash_large_binary(offsets: Buffer, data: Buffer, offset: int, length: int) -> array.array[int]: ...
