"""Near-ties of the discrete routing decisions the tests compare across two fp32 computations of the
same router (lathe vs transformers; or two transformers models whose matrices have other shapes):
which top-k experts a token selects, their rank order, the argmax logit.

Two such computations differ by ~1e-6 relative in a router's scores (other summation orders, MKL's
per-vendor kernels, thread counts). A decision whose margin in the reference is below NEAR_TIE of the
token's score scale may go either way; one above it may not. NEAR_TIE = 1e-4 is ~100x that noise and
flags only a few tokens (the tests print how many). Margins are relative to the token's largest
finite |score|, so the threshold does not depend on the router's logit scale.

A test allows each flagged token to take any of its near-tie alternatives (see selection_alternatives)
and nothing else: with no flagged token its comparison stays exact."""
import math

import torch

NEAR_TIE = 1e-4


def choice_scores(router, logits):
    """What the router ranks experts by, float64: the logits for softmax routers (the softmax is
    monotone), sigmoid + correction bias for DeepSeek-V3. Masked experts stay −inf."""
    logits = logits.double()
    bias = getattr(router, "e_score_correction_bias", None)
    return logits if bias is None else logits.sigmoid() + bias.double()


def token_scale(scores):
    """Per token: the largest finite |score| (margins are relative to it)."""
    finite = torch.where(torch.isfinite(scores), scores.abs(), torch.zeros_like(scores))
    return finite.max(1).values.clamp_min(1e-30)


def _group_sets(router, scores):
    """DeepSeek-V3's group-limited choice, as transformers computes it: ([n, groups] bool chosen
    groups, [n] relative margin of the last chosen over the first dropped group; +inf without
    groups)."""
    n, experts = scores.shape
    groups, keep = getattr(router, "num_group", 1), getattr(router, "topk_group", 1)
    if groups <= 1 or keep >= groups:
        return torch.ones(n, 1, dtype=torch.bool), torch.full((n,), math.inf, dtype=torch.float64)
    group_score = scores.view(n, groups, experts // groups).topk(2, dim=-1).values.sum(-1)
    top = group_score.topk(keep + 1, dim=-1)
    margin = (top.values[:, keep - 1] - top.values[:, keep]) / token_scale(scores)
    chosen = torch.zeros(n, groups, dtype=torch.bool).scatter_(1, top.indices[:, :keep], True)
    return chosen, torch.nan_to_num(margin, nan=math.inf)  # −inf vs −inf: both groups fully masked


def _eligible(scores, chosen_groups):
    """scores with the experts outside the chosen groups at −inf."""
    n, experts = scores.shape
    mask = chosen_groups.repeat_interleave(experts // chosen_groups.shape[1], dim=1)
    return scores.masked_fill(~mask, -math.inf)


def selection_margin(router, logits, selected):
    """Per token: the relative margin by which its selected set (`selected` [n, k], any order) won:
    the least selected minus the best unselected eligible score, and (groups) the group margin."""
    scores = choice_scores(router, logits)
    chosen, group_margin = _group_sets(router, scores)
    eligible = _eligible(scores, chosen).scatter(1, selected, -math.inf)
    boundary = (scores.gather(1, selected).min(1).values - eligible.max(1).values) / token_scale(scores)
    return torch.minimum(torch.nan_to_num(boundary, nan=math.inf), group_margin)


def rank_margin(router, logits, selected):
    """Per token: the least relative gap between adjacent ranks of `selected` [n, k] (best first)."""
    scores = choice_scores(router, logits)
    ranked = scores.gather(1, selected)
    if ranked.shape[1] < 2:
        return torch.full((len(scores),), math.inf, dtype=torch.float64)
    return (ranked[:, :-1] - ranked[:, 1:]).min(1).values / token_scale(scores)


def selection_alternatives(router, logits, selected, ranks=False, threshold=NEAR_TIE):
    """[(token, other selection [k])] for every token whose selection hinges on a near-tie (|margin|
    below `threshold`): a selected expert swapped in place for an unselected eligible one within the
    threshold; (groups) the top-k from the other group set when the group margin is that small; with
    `ranks`, also two adjacent ranks of `selected` (best first) swapped when that close. A selection
    that loses to another by more than the threshold is no near-tie: it has no alternative."""
    flagged = selection_margin(router, logits, selected).abs() < threshold
    if ranks:
        flagged |= rank_margin(router, logits, selected).abs() < threshold
    scores = choice_scores(router, logits)
    chosen, group_margin = _group_sets(router, scores)
    result = []
    for t in flagged.nonzero().flatten().tolist():
        s, sel, limit = scores[t], selected[t], threshold * token_scale(scores[t:t + 1]).item()
        alternatives = []
        group_sets = [chosen[t]]
        if group_margin[t] < threshold:  # the last chosen and the first dropped group swapped
            group_score = s.view(chosen.shape[1], -1).topk(2, dim=-1).values.sum(-1)
            other = chosen[t].clone()
            other[group_score.masked_fill(~chosen[t], math.inf).argmin()] = False
            other[group_score.masked_fill(chosen[t], -math.inf).argmax()] = True
            group_sets.append(other)
            for g in group_sets:
                alternatives.append(_eligible(s[None], g[None])[0].topk(len(sel)).indices)
        for g in group_sets:
            eligible = _eligible(s[None], g[None])[0]
            for r, i in enumerate(sel.tolist()):
                for j in range(len(s)):
                    if j not in sel and math.isfinite(eligible[j]) and abs(s[i] - eligible[j]) < limit:
                        alternatives.append(sel.clone().index_fill_(0, torch.tensor([r]), j))
        if ranks:
            for r in range(len(sel) - 1):
                if abs(s[sel[r]] - s[sel[r + 1]]) < limit:
                    alternatives.append(sel[torch.tensor([*range(r), r + 1, r, *range(r + 2, len(sel))])])
        seen = {tuple(sel.tolist())}
        for alt in alternatives:
            if tuple(alt.tolist()) not in seen:
                seen.add(tuple(alt.tolist()))
                result.append((t, alt))
    return result


def top1_alternatives(logits, threshold=NEAR_TIE):
    """[(token, other expert)] for every token whose largest raw logit is within `threshold`
    (relative) of another expert's."""
    logits = logits.double()
    top = logits.argmax(1)
    gap = (logits.gather(1, top[:, None]) - logits) / token_scale(logits)[:, None]
    gap.scatter_(1, top[:, None], math.inf)
    return [(t, e) for t, e in (gap < threshold).nonzero().tolist()]


def least_margins(routers, forward, valid_shape):
    """(forward(), [B, T] float64: per token the least selection_margin at any of `routers`, hooked
    while forward runs). Routers return (logits, weights, selected experts)."""
    margins = []

    def hook(module, args, output):
        logits, _, selected = output
        logits = logits.reshape(-1, logits.shape[-1])
        margins.append(selection_margin(module, logits, selected.reshape(len(logits), -1)))
    handles = [router.register_forward_hook(hook) for router in routers]
    try:
        result = forward()
    finally:
        for handle in handles:
            handle.remove()
    assert len(margins) == len(routers), (len(margins), len(routers))
    return result, torch.stack(margins).min(0).values.reshape(valid_shape)


def before_near_ties(margins, valid):
    """[B, T] bool: the valid positions before their sequence's first near-tie routing (margin below
    NEAR_TIE at any router). A token routed the other way changes its own hidden state and, through
    attention, those of every later position; earlier positions cannot see it (causal)."""
    valid = valid.bool()
    near = (margins < NEAR_TIE) & valid
    return valid & (near.long().cumsum(1) == 0)
