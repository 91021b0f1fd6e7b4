"""chipstate.walk: the CCDC rule continued from a state equals it on the whole series.

The oracle is the rule written chip by chip in plain Python (``_rule``)."""

import numpy as np
import pytest

from geofm.analyze.change import SeasonalFit, assess
from geofm.analyze.chipstate import ChipState, load_state, walk


def _series(seed, n_chips=300, n_t=40):
    rng = np.random.default_rng(seed)
    resid = rng.normal(size=(n_chips, n_t)) * rng.uniform(0.5, 3.0, size=(n_chips, 1))
    steps = rng.random(n_chips) < 0.4  # planted shifts of either sign, at random dates
    at = rng.integers(5, n_t, size=n_chips)
    resid[steps] += np.where(np.arange(n_t)[None, :] >= at[steps, None],
                             rng.choice([-5.0, 5.0], size=(int(steps.sum()), 1)), 0.0)
    valid = rng.random((n_chips, n_t)) > 0.1
    resid[~valid & (rng.random((n_chips, n_t)) > 0.5)] = np.nan
    monitor = np.arange(n_t)[None, :] >= rng.integers(0, 20, size=(n_chips, 1))
    ns = (np.arange(n_t)[None, :] + 1) * 86_400 * 10**9 + np.zeros((n_chips, 1), np.int64)
    scene = np.array([f"s{t}" for t in range(n_t)], dtype=object)[None, :].repeat(n_chips, 0)
    fitted = rng.random(n_chips) > 0.05
    return resid, valid, monitor, ns, scene, fitted


def _rule(resid, valid, monitor, fitted, threshold=3.0, consecutive=3):
    """The CCDC rule as documented, chip by chip in plain Python (the oracle)."""
    n_chips, n_t = resid.shape
    out = {k: [] for k in ("status", "change", "change_index", "confirm_index", "magnitude",
                           "n_observations", "n_monitor", "anomaly")}
    for c in range(n_chips):
        r, v = resid[c], valid[c]
        m = v & monitor[c]
        ok = bool(fitted[c]) and m.sum() >= consecutive
        anomaly = (np.abs(r) > threshold) & v & ok
        run, side, start, change, confirm = 0, 0.0, -1, -1, -1
        for t in range(n_t):
            s = float(np.sign(r[t])) if anomaly[t] and m[t] else 0.0
            if s != 0 and s == side and run > 0:
                run += 1
            elif s != 0:
                run, start = 1, t
            elif m[t]:
                run = 0
            side = s if s != 0 else (0.0 if m[t] else side)
            if run >= consecutive and change < 0:
                change, confirm = start, t
        changed = change >= 0 and ok
        after = m & (np.arange(n_t) >= change if changed else True) & np.isfinite(r)
        out["status"].append("insufficient data" if not ok else
                             "change" if changed else "no change")
        out["change"].append(changed)
        out["change_index"].append(change if changed else -1)
        out["confirm_index"].append(confirm if changed else -1)
        out["magnitude"].append(np.median(np.abs(r[after])) if ok and after.any() else np.nan)
        out["n_observations"].append(int(v.sum()))
        out["n_monitor"].append(int(m.sum()))
        out["anomaly"].append(anomaly)
    return {k: np.array(v, dtype=object if k == "status" else None) for k, v in out.items()}


def _assess(resid, valid, monitor, fitted):
    expected = _rule(resid, valid, monitor, fitted)
    n = fitted.size
    fit = SeasonalFit(coef=np.zeros((n, 1, 9)), intercept=np.zeros((n, 1)),
                      scale=np.ones((n, 1)), fitted=fitted, n_baseline=np.zeros(n, int))
    got = assess(fit, resid.copy(), valid, monitor, threshold=3.0, consecutive=3)
    for key, value in expected.items():  # assess is the rule as documented
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    return expected


KEYS = ("status", "change", "change_index", "confirm_index", "magnitude", "n_observations",
        "n_monitor")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_walk_of_the_whole_series_equals_assess(seed):
    resid, valid, monitor, ns, scene, fitted = _series(seed)
    expected = _assess(resid, valid, monitor, fitted)
    present = np.ones(resid.shape, bool)
    state, out = walk(ChipState.empty(fitted.size), resid, present, valid, monitor, ns, scene,
                      fitted, threshold=3.0, consecutive=3)
    for key in (*KEYS, "anomaly"):
        np.testing.assert_array_equal(out[key], expected[key], err_msg=key)
    assert expected["change"].sum() > 50  # the series have changes to find
    assert (state.n_seen == resid.shape[1]).all() and (state.last_ns == ns[:, -1]).all()


@pytest.mark.parametrize("seed,cuts", [(0, (10,)), (1, (25, 26, 33)), (2, (1, 20, 39))])
def test_walking_on_from_a_state_equals_the_whole_series(seed, cuts, tmp_path):
    resid, valid, monitor, ns, scene, fitted = _series(seed)
    expected = _assess(resid, valid, monitor, fitted)
    state = ChipState.empty(fitted.size)
    ids = np.array([f"c{i:04d}" for i in range(fitted.size)], dtype=object)
    anomaly = []
    bounds = [0, *cuts, resid.shape[1]]
    flips = 0
    for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        part = slice(lo, hi)
        before = state.ok
        state, out = walk(state, resid[:, part], np.ones((fitted.size, hi - lo), bool),
                          valid[:, part], monitor[:, part], ns[:, part], scene[:, part], fitted,
                          threshold=3.0, consecutive=3)
        # a chip that just became assessable counts its earlier anomalies: walked anew
        redo = np.flatnonzero(state.ok != before)
        flips += redo.size
        if redo.size:
            whole = slice(0, hi)
            fresh, again = walk(ChipState.empty(redo.size), resid[redo, whole],
                                np.ones((redo.size, hi), bool), valid[redo, whole],
                                monitor[redo, whole], ns[redo, whole], scene[redo, whole],
                                fitted[redo], threshold=3.0, consecutive=3)
            keep = np.setdiff1d(np.arange(fitted.size), redo)
            state = ChipState.concat([state.take(keep), fresh]).take(
                np.argsort(np.concatenate([keep, redo])))
            for key in KEYS:
                out[key][redo] = again[key]
            for k, past in enumerate(anomaly):
                past[redo] = again["anomaly"][:, bounds[k]:bounds[k + 1]]
            out["anomaly"][redo] = again["anomaly"][:, lo:hi]
        anomaly.append(out["anomaly"])
        state.save(tmp_path / "state.npz", ids, update=i)  # and back: what an update reads
        state, known = load_state(tmp_path / "state.npz", update=i, chip_ids=ids)
        assert known.all()
    for key in KEYS:
        np.testing.assert_array_equal(out[key], expected[key], err_msg=key)
    np.testing.assert_array_equal(np.concatenate(anomaly, axis=1), expected["anomaly"])
    changed = expected["change"]
    col = expected["confirm_index"][changed]
    assert (state.confirm_scene[changed] == scene[0, col]).all()
    assert (state.change_ns[changed] == ns[changed, expected["change_index"][changed]]).all()
    assert load_state(tmp_path / "state.npz", update=99, chip_ids=ids) is None  # another's
    # a chip added since: the empty state (known False); a chip gone: unusable
    grown = np.sort(np.append(ids, "c0000a"))
    mapped, known = load_state(tmp_path / "state.npz", update=i, chip_ids=grown)
    assert (~known).sum() == 1 and not known[1] and mapped.n_seen[1] == 0
    assert mapped.n_seen[2] == state.n_seen[1] and mapped.run[0] == state.run[0]
    assert load_state(tmp_path / "state.npz", update=i, chip_ids=ids[1:]) is None
    assert flips > 0  # the case is exercised


def test_take_and_concat_keep_each_chips_values():
    resid, valid, monitor, ns, scene, fitted = _series(3, n_chips=50)
    state, _ = walk(ChipState.empty(50), resid, np.ones(resid.shape, bool), valid, monitor,
                    ns, scene, fitted, threshold=3.0, consecutive=3)
    order = np.array([7, 3, 49, 0])
    parts = ChipState.concat([state.take(order[:2]), state.take(order[2:])])
    for i, c in enumerate(order):
        a = parts.after[parts.after_bounds[i]:parts.after_bounds[i + 1]]
        b = state.after[state.after_bounds[c]:state.after_bounds[c + 1]]
        np.testing.assert_array_equal(a, b)
        assert parts.run[i] == state.run[c] and parts.start_ns[i] == state.start_ns[c]
