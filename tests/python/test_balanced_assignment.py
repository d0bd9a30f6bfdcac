"""balanced_assignment (compressor/quant/balanced_assignment.h) through tests/tools/lathe_assign: on
random float, tie-heavy integer and Hamming-like (CMoE) costs its total equals the optimum of the
dense assignment problem on the repeated-column matrix (each bin's column repeated `capacity`
times, R × k·capacity), every bin holds at most `capacity` rows; bad inputs are refused with a
message naming what is wrong.

The reference optimum is scipy.optimize.linear_sum_assignment where scipy is installed; without it,
an independent Hungarian method below (shortest augmenting paths with duals, on the same dense
matrix), itself checked against brute force here."""
import itertools
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

try:
    from scipy.optimize import linear_sum_assignment
except ImportError:  # scipy is not pinned in requirements.txt: fall back to the solver below
    linear_sum_assignment = None

SOURCE_DIR = Path(os.environ.get("LATHE_SOURCE_DIR", Path(__file__).resolve().parents[2]))
ASSIGN_BIN = Path(os.environ.get("LATHE_ASSIGN_BIN", SOURCE_DIR / "build" / "tests" / "lathe_assign"))


@pytest.fixture(scope="module")
def assign_bin() -> Path:
    if not ASSIGN_BIN.is_file():
        pytest.fail(f"lathe_assign not found at {ASSIGN_BIN}: build it (cmake --build build) "
                    "or set LATHE_ASSIGN_BIN")
    return ASSIGN_BIN


def run_assign(binary, text: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary)], input=text, capture_output=True, text=True, timeout=120)


def assign(binary, cost: np.ndarray, capacity: int) -> np.ndarray:
    rows, bins = cost.shape
    body = "\n".join(" ".join(repr(float(x)) for x in row) for row in cost)
    proc = run_assign(binary, f"{rows} {bins} {capacity}\n{body}\n")
    assert proc.returncode == 0, proc.stderr
    out = np.array([int(line) for line in proc.stdout.split()], dtype=np.int64)
    assert out.shape == (rows,), f"expected {rows} bins, got {len(out)}"
    return out


def hungarian(a: np.ndarray) -> np.ndarray:
    """Column of each row for a least-cost matching of every row of `a` (n × m, n ≤ m): rows are
    added one at a time along shortest augmenting paths over the columns, with duals u, v."""
    n, m = a.shape
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    match = np.zeros(m + 1, dtype=np.int64)  # row (1-based) held by column j (1-based); 0 = free
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        match[0] = i
        j0 = 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = match[j0]
            free = ~used[1:]
            cur = a[i0 - 1] - u[i0] - v[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            candidates = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            u[match[used]] += delta
            v[used] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    col = np.empty(n, dtype=np.int64)
    for j in range(1, m + 1):
        if match[j]:
            col[match[j] - 1] = j - 1
    return col


def optimum(cost: np.ndarray, capacity: int) -> float:
    """The least total of the dense problem: each bin's column repeated `capacity` times."""
    dense = np.repeat(cost, capacity, axis=1)
    if linear_sum_assignment is not None:
        rows, cols = linear_sum_assignment(dense)
        assert len(rows) == cost.shape[0]
    else:
        rows, cols = np.arange(cost.shape[0]), hungarian(dense)
    return float(dense[rows, cols].sum())


def brute_force(cost: np.ndarray, capacity: int) -> float:
    rows, bins = cost.shape
    best = np.inf
    for bin_of in itertools.product(range(bins), repeat=rows):
        if max(np.bincount(bin_of, minlength=bins)) <= capacity:
            best = min(best, float(cost[np.arange(rows), list(bin_of)].sum()))
    return best


def hamming_costs(rng, rows: int, bins: int) -> np.ndarray:
    """CMoE's: L1 distances between random 0/1 activation columns of the rows and of k
    representatives (drawn from the rows where there are enough, as CMoE's centres are)."""
    dim = int(rng.integers(4, 40))
    acts = (rng.random((rows, dim)) < rng.uniform(0.1, 0.6)).astype(np.int64)
    if rows >= bins and rng.random() < 0.5:
        centres = acts[rng.choice(rows, size=bins, replace=False)]
    else:
        centres = (rng.random((bins, dim)) < 0.5).astype(np.int64)
    return np.abs(acts[:, None, :] - centres[None, :, :]).sum(axis=2).astype(np.float64)


def make_case(seed: int):
    rng = np.random.default_rng(1000 + seed)
    bins = int(rng.integers(1, 9))
    if seed % 2 == 0:  # exactly full: R = k·capacity
        capacity = int(rng.integers(1, 60 // bins + 1))
        rows = bins * capacity
    else:  # mostly slack: from the least capacity that fits to 3 more
        rows = int(rng.integers(1, 61))
        capacity = -(-rows // bins) + int(rng.integers(0, 4))
    kind = ("float", "int", "hamming")[seed % 3]
    if kind == "float":
        cost = rng.normal(size=(rows, bins)) * 10.0 ** rng.integers(-3, 4)
    elif kind == "int":
        cost = rng.integers(0, int(rng.integers(1, 5)), size=(rows, bins)).astype(np.float64)
    else:
        cost = hamming_costs(rng, rows, bins)
    return cost, capacity, kind


CASES = 240


@pytest.mark.parametrize("seed", range(CASES))
def test_optimum_against_dense_assignment(assign_bin, seed):
    cost, capacity, kind = make_case(seed)
    rows, bins = cost.shape
    bin_of = assign(assign_bin, cost, capacity)
    assert bin_of.min() >= 0 and bin_of.max() < bins
    assert np.bincount(bin_of, minlength=bins).max() <= capacity
    total = float(cost[np.arange(rows), bin_of].sum())
    best = optimum(cost, capacity)
    if kind == "float":
        scale = max(1.0, float(np.abs(cost).max(axis=1).sum()))
        assert abs(total - best) <= 1e-9 * scale, (rows, bins, capacity, total, best)
    else:
        assert total == best, (rows, bins, capacity, total, best)


def test_cases_cover_full_and_slack():
    full = slack = 0
    for seed in range(CASES):
        cost, capacity, _ = make_case(seed)
        rows, bins = cost.shape
        assert rows <= bins * capacity
        full += rows == bins * capacity
        slack += rows < bins * capacity
    assert full >= 60 and slack >= 60, (full, slack)


@pytest.mark.parametrize("seed", range(40))
def test_tiny_cases_against_brute_force(assign_bin, seed):
    rng = np.random.default_rng(seed)
    bins = int(rng.integers(1, 4))
    rows = int(rng.integers(1, 7))
    capacity = -(-rows // bins) + int(rng.integers(0, 2))
    cost = rng.integers(0, 4, size=(rows, bins)).astype(np.float64)
    best = brute_force(cost, capacity)
    assert optimum(cost, capacity) == best  # the reference itself
    bin_of = assign(assign_bin, cost, capacity)
    assert np.bincount(bin_of, minlength=bins).max() <= capacity
    assert float(cost[np.arange(rows), bin_of].sum()) == best


def test_larger_case(assign_bin):
    rng = np.random.default_rng(7)
    rows, bins, capacity = 2000, 8, 250
    cost = hamming_costs(rng, rows, bins)
    cost += rng.integers(0, 3, size=cost.shape)  # a little noise on top of the ties
    bin_of = assign(assign_bin, cost, capacity)
    assert (np.bincount(bin_of, minlength=bins) == capacity).all()
    assert float(cost[np.arange(rows), bin_of].sum()) == optimum(cost, capacity)


def test_same_input_same_output(assign_bin):
    cost = np.random.default_rng(3).integers(0, 2, size=(300, 6)).astype(np.float64)
    assert (assign(assign_bin, cost, 50) == assign(assign_bin, cost, 50)).all()


@pytest.mark.parametrize("text, code, needle", [
    ("5 2 2\n" + "0 " * 10, 2, "5 rows do not fit in 2 bins of 2"),
    ("0 2 1\n", 2, "rows: must be 1.."),
    ("2 0 1\n", 2, "bins: must be 1.."),
    ("2 2 0\n0 0 0 0\n", 2, "capacity: must be at least 1"),
    ("-1 2 1\n", 2, "rows: must be 1.."),
    ("2 2 1\n0 nan 1 2\n", 3, "row 0, bin 1 is not finite"),
    ("2 2 1\n0 1 inf 2\n", 3, "row 1, bin 0 is not finite"),
    ("2 2 1\n0 1 2\n", 3, "expected R*k = 4 costs after the header, got 3"),
    ("2 2 1\n0 1 2 3 4\n", 3, "expected R*k = 4 costs after the header, got 5"),
    ("2 2 1\n0 1 x 3\n", 3, "value 2 ('x') is not a number"),
    ("2 2\n", 2, "capacity: missing from the header"),
    ("2 two 1\n", 2, "k: expected a whole number, got 'two'"),
])
def test_bad_input_is_refused(assign_bin, text, code, needle):
    proc = run_assign(assign_bin, text)
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error: "), proc.stderr
    assert needle in proc.stderr, proc.stderr
    assert proc.stdout == ""
