"""An independent NumPy / SciPy / torch reading of CMoE (ALGORITHMS.md §5) for tests/python/test_cmoe.py.

Written from the algorithm text, not from lathe's sources:
  - `atopk_markers`: §5.1, the K_a largest |a| of a = SiLU(ĥĜᵀ) ⊙ (ĥÛᵀ) per token, in float64, with
    the rows whose K_a-th and (K_a+1)-th largest |a| are a near-tie (lathe works in fp32);
  - `carve`: §5.2, shared by rate (stable, ties to the lower id), seeds, the L1 cost to the seeds and
    the balanced optimum by scipy's linear_sum_assignment on the repeated-column R×R matrix (the
    reference code's LAPJV formulation, ALGORITHMS.md §5.2 note);
  - `representatives`: §5.2.4 in exact integer arithmetic (m × the L1 distance to the mean column);
  - `CarvedMLP`: the carved block of §5.3 as a torch module, to run inside transformers' Llama."""
import itertools
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from scipy.optimize import linear_sum_assignment

# A row whose K_a-th and (K_a+1)-th |a| differ by less than this × the row's largest |a| may be marked
# either way by lathe's fp32 arithmetic (test_calibrate_parity.py measured fp32 errors ≤ 1.1e-6 × the
# largest |a|).
NEAR_TIE = 1e-5


def load_dir(path) -> dict:
    """Every tensor of a checkpoint directory's shards, as torch tensors."""
    out = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def rownorm(w):
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def silu(x):
    return x / (1.0 + np.exp(-x))


def atopk_markers(h, gate, up, atopk):
    """(markers [T, I] int64, near-tie rows, per near-tie row the (K-th, (K+1)-th) neuron ids) of
    ALGORITHMS.md §5.1, float64 throughout."""
    h, gate, up = (np.asarray(x, np.float64) for x in (h, gate, up))
    hn = rownorm(h)
    a = np.abs(silu(hn @ rownorm(gate).T) * (hn @ rownorm(up).T))
    order = np.argsort(-a, axis=1, kind="stable")
    rows = np.arange(a.shape[0])
    kth, nxt = a[rows, order[:, atopk - 1]], a[rows, order[:, atopk]]
    near = np.flatnonzero((kth - nxt) < NEAR_TIE * a.max(axis=1))
    markers = np.zeros(a.shape, np.int64)
    np.put_along_axis(markers, order[:, :atopk], 1, axis=1)
    swaps = [(int(order[t, atopk - 1]), int(order[t, atopk])) for t in near]
    return markers, near, swaps


def marker_variants(markers, near, swaps, limit=256):
    """The markers lathe may have produced: every choice of side at the near-tie rows."""
    if 2 ** len(near) > limit:
        raise AssertionError(f"{len(near)} near-tie ATopK rows: too many to enumerate")
    for flips in itertools.product((False, True), repeat=len(near)):
        m = markers.copy()
        for flip, t, (j_in, j_out) in zip(flips, near, swaps):
            if flip:
                m[t, j_in], m[t, j_out] = 0, 1
        yield m


def carve(markers, experts, shared):
    """§5.2 steps 1-3 on binary markers [T, I]: {rates, shared (ascending), seeds (by rate), rest
    (ascending), cost [R, k] (L1 to the seeds), optimum (the minimum total cost of a balanced
    assignment), clusters (one optimal assignment, each list ascending)}."""
    tokens, width = markers.shape
    m, k = width // experts, experts - shared
    rates = markers.sum(0) / tokens
    order = np.argsort(-rates, kind="stable")  # highest rate first, ties to the lower id
    shared_ids = np.sort(order[:shared * m])
    seeds = order[shared * m:shared * m + k]
    rest = np.sort(order[shared * m:])
    cols = markers.astype(np.int64)
    counts = cols.sum(0)
    # ‖a − b‖₁ of binary columns = n_a + n_b − 2 aᵀb
    cost = counts[rest][:, None] + counts[seeds][None, :] - 2 * (cols[:, rest].T @ cols[:, seeds])
    big = np.repeat(cost, m, axis=1)  # R × R: seed c's column repeated m times
    rows, picked = linear_sum_assignment(big)
    bins = picked[np.argsort(rows)] // m
    clusters = [sorted(rest[bins == c].tolist()) for c in range(k)]
    return {"rates": rates, "shared": shared_ids.tolist(), "seeds": seeds.tolist(),
            "rest": rest.tolist(), "cost": cost, "optimum": int(big[rows, picked].sum()),
            "clusters": clusters}


def representative_candidates(markers, members):
    """The members at the minimum L1 distance to the cluster's mean marker column (exact: m × the
    distance, in integers), ascending."""
    cols = markers[:, members].astype(np.int64)
    dist = np.abs(len(members) * cols - cols.sum(1, keepdims=True)).sum(0)
    return [members[i] for i in np.flatnonzero(dist == dist.min())]


class CarvedMLP(torch.nn.Module):
    """The carved FFN of ALGORITHMS.md §5.3 in float64: s = |(Wc x) ⊙ SiLU(Wg x)| on the raw input,
    p = softmax(s), the A experts of largest p + b, output shared(x) + Σ_sel (1 + p_e λ_e) E_e(x).
    Records, per forward, which tokens' selection is clear of a near-tie (`clear`: [B, T] bool, the
    A-th minus the (A+1)-th p + b above what fp32 may flip)."""

    def __init__(self, tensors, layer, top_k):
        super().__init__()
        pre = f"model.layers.{layer}.mlp."
        get = lambda name: tensors[pre + name].double()  # noqa: E731
        self.wg, self.wc = get("router.gate_proj.weight"), get("router.up_proj.weight")
        self.scale, self.bias = get("router.extra_scale"), get("router.bias")
        self.experts = [tuple(get(f"experts.{e}.{p}_proj.weight") for p in ("gate", "up", "down"))
                        for e in range(self.wg.shape[0])]
        name = "shared_expert.gate_proj.weight"
        self.shared = tuple(get(f"shared_expert.{p}_proj.weight") for p in ("gate", "up", "down")) \
            if pre + name in tensors else None
        self.top_k = top_k
        self.clear = []

    @staticmethod
    def ffn(x, w):
        gate, up, down = w
        return (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T

    def forward(self, x):
        shape, dtype = x.shape, x.dtype
        x = x.reshape(-1, shape[-1]).double()
        p = ((x @ self.wc.T) * torch.nn.functional.silu(x @ self.wg.T)).abs().softmax(-1)
        score = p + self.bias
        top = score.topk(min(self.top_k + 1, score.shape[1]), dim=-1)
        if self.top_k < score.shape[1]:
            a, b = top.indices[:, self.top_k - 1], top.indices[:, self.top_k]
            margin = top.values[:, self.top_k - 1] - top.values[:, self.top_k]
            # lathe's fp32 p is good to ~1e-6 relative (s up to ~40: 4e-6 absolute in the exponent),
            # and lathe adds b in fp64, where p + b rounds to ~1e-17 (|b| ≤ 0.03): closer selections
            # may go either way
            pair = torch.maximum(p.gather(1, a[:, None]), p.gather(1, b[:, None]))[:, 0]
            tol = 1e-4 * pair + (1e-17 if bool(self.bias.abs().max() > 0) else 0.0)
            self.clear.append((margin > tol).reshape(shape[:-1]))
        chosen = top.indices[:, :self.top_k]
        out = self.ffn(x, self.shared) if self.shared is not None else torch.zeros_like(x)
        for e, w in enumerate(self.experts):
            rows = (chosen == e).any(-1)
            if rows.any():
                g = 1 + p[rows, e] * self.scale[e]
                out[rows] += g[:, None] * self.ffn(x[rows], w)
        return out.reshape(shape).to(dtype)


def carved_llama(dense_dir, carved_dir):
    """transformers' Llama on the dense checkpoint with every carved layer's MLP replaced by
    CarvedMLP on the carved checkpoint's tensors (float32 elsewhere)."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32).eval()
    config = json.loads((Path(carved_dir) / "config.json").read_text())["lathe_cmoe"]
    tensors = load_dir(carved_dir)
    mlps = {}
    for entry in config["layers"]:
        mlps[entry["layer"]] = CarvedMLP(tensors, entry["layer"], entry["top_k"])
        model.model.layers[entry["layer"]].mlp = mlps[entry["layer"]]
    return model, mlps
