"""Exact running sums of float64 values, so a view's float ``sum``/``avg`` does not depend
on the order or the grouping of the changes that built it.

A float sum kept as a running float64 drifts with the order of additions and removals
(0.1 + 0.2 - 0.1 is 0.20000000000000004, while a fresh 0.2 is 0.2). A view whose state is
rebuilt from its inputs after a reopen then disagreed in the last bits with the rows it
had stored, retracted a row that was not there and became unreadable. Here each group
keeps its sum exactly, as a Python int in units of 2**-SCALE (every finite float64 is an
integer multiple of 2**-1074, and its 53-bit significand needs 52 more), plus counts of
+inf, -inf and NaN; the float it reports is the exact sum rounded once (CPython's int
true division rounds correctly). The same rows give the same bits, whatever the path.

Batch at a time: significands are split into two 26/27-bit halves and added with numpy
per (group, exponent) bucket; Python touches each bucket once (at most 2,098 exponents
per group, and real data spans a few dozen), never each row.
"""

from __future__ import annotations

import math

import numpy as np

SCALE = 1126                 # 2**-1126: the weight of the lowest significand bit of the smallest subnormal
_EXPONENTS = 2 * SCALE       # exponent buckets per group (frexp's e + SCALE - 53 lies in [0, 2098))
_ROWS_PER_PASS = 1 << 16     # rows summed in int64 per pass: |half| < 2**27, |w| < 2**20 -> no overflow
_W_MAX = 1 << 20
_LO_BITS = 26
SPECIAL_POS_INF, SPECIAL_NEG_INF, SPECIAL_NAN = 0, 1, 2


def exact_of(value: float) -> int:
    """``value`` (finite) in units of 2**-SCALE, exactly."""
    num, den = value.as_integer_ratio()  # den is a power of two, at most 2**1074
    return num * ((1 << SCALE) // den)


def rounded(total: int, special) -> float:
    """The float of an exact sum (``special``: its +inf, -inf, NaN counts)."""
    pos, neg, nan = int(special[0]), int(special[1]), int(special[2])
    if nan or (pos and neg):
        return math.nan
    if pos:
        return math.inf
    if neg:
        return -math.inf
    try:
        return total / (1 << SCALE)
    except OverflowError:  # beyond float64: IEEE addition would have overflowed to inf too
        return math.inf if total > 0 else -math.inf


def add_one(exact: list, special: np.ndarray, slot: int, value: float, weight: int) -> None:
    """Add ``weight`` times ``value`` (a Python float) to group ``slot``."""
    if math.isfinite(value):
        exact[slot] += exact_of(value) * weight
    else:
        special[slot, SPECIAL_NAN if math.isnan(value) else SPECIAL_POS_INF if value > 0 else SPECIAL_NEG_INF] += weight


def add_batch(exact: list, special: np.ndarray, row_slots: np.ndarray, values: np.ndarray, present: np.ndarray,
              weights: np.ndarray) -> None:
    """Add ``weights * values`` (rows where ``present``) into their groups' exact sums."""
    values = np.asarray(values, np.float64)
    weights = np.asarray(weights, np.int64)
    finite = present & np.isfinite(values)
    odd = present & ~finite
    if odd.any():
        kind = np.where(np.isnan(values[odd]), SPECIAL_NAN,
                        np.where(values[odd] > 0, SPECIAL_POS_INF, SPECIAL_NEG_INF))
        np.add.at(special, (row_slots[odd], kind), weights[odd])
    if not finite.any():
        return
    slots, vals, w = row_slots[finite], values[finite], weights[finite]
    if np.abs(w).max() >= _W_MAX:  # (consolidated weights this large are rare): exact, a row at a time
        for slot, value, weight in zip(slots.tolist(), vals.tolist(), w.tolist(), strict=True):
            exact[slot] += exact_of(value) * weight
        return
    mant, exp = np.frexp(vals)               # vals = mant * 2**exp, 0.5 <= |mant| < 1
    sig = np.ldexp(mant, 53).astype(np.int64)  # exact: |sig| < 2**53
    shift = exp.astype(np.int64) - 53 + SCALE  # value = sig * 2**(shift - SCALE), shift >= 0
    signed_w = np.where(sig < 0, -w, w)
    sig = np.abs(sig)
    hi, lo = sig >> _LO_BITS, sig & ((1 << _LO_BITS) - 1)
    bucket = slots * _EXPONENTS + shift
    for start in range(0, len(bucket), _ROWS_PER_PASS):
        part = slice(start, start + _ROWS_PER_PASS)
        keys, inverse = np.unique(bucket[part], return_inverse=True)
        hi_sum = np.zeros(len(keys), np.int64)
        lo_sum = np.zeros(len(keys), np.int64)
        np.add.at(hi_sum, inverse, hi[part] * signed_w[part])
        np.add.at(lo_sum, inverse, lo[part] * signed_w[part])
        for key, h, low in zip(keys.tolist(), hi_sum.tolist(), lo_sum.tolist(), strict=True):
            slot, sh = divmod(key, _EXPONENTS)
            exact[slot] += ((h << _LO_BITS) + low) << sh
