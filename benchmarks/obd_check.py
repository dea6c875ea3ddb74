"""A real public log through `stopbandit replay`: the Open Bandit Dataset sample, checked against its truth and OBP.

    python benchmarks/obd_check.py                                   # obp importable here
    python benchmarks/obd_check.py --obp-python /path/to/venv/bin/python   # obp in another environment
    python benchmarks/obd_check.py --obd DIR                         # DIR holds bts/all/all.csv and random/all/all.csv

The log: the small sample of the Open Bandit Dataset (ZOZOTOWN fashion
e-commerce, campaign "all", 10,000 impressions per behaviour policy, 80
items shown in 3 positions; Saito et al., NeurIPS 2021 Datasets track,
CC BY 4.0) that ships inside the Open Bandit Pipeline package. Nothing of it
is copied into this repository: the script reads it from the obp install and
exits with a message (status 0, "skipped") when obp is not there.

The check of the offline-evaluation guide: the log of Bernoulli Thompson
Sampling (``bts``) is the logged data; the candidate is the uniform-random
policy; the truth is the on-policy mean click of the log the uniform-random
policy itself wrote (``random``), the ground truth OBP's own examples use.

Positions: each impression (one item at one position) is one decision. The
item is the arm (plain arms ``action_0`` … ``action_79``, the numeric item
id maps to them), the position is the decision's domain (the policy model
crosses the domain with the context and the arm, so an item gets its own
click rate per position), and the propensity is the dataset's
``propensity_score``: the probability that the behaviour policy puts that
item at that position, which sums to 1 over the 80 items for each position.
So each impression is a one-slot decision with a proper probability vector,
and the candidate "uniform at each position" has probability 1/80 for every
item: the same estimand as OBP's ``action_dist`` of 1/80 for every item and
position. Treating the three impressions of one page as one decision with
three per-item propensities would not be a probability vector (it sums to 3)
and the importer refuses it.

Features: the four hashed user features as categorical values, the 80
user-item affinities as numbers (zeros left out); the item's own features are
not used (a plain arm is only a name).

Steps, all through the CLI (``python -m stopbandit.cli``), into a fresh
SQLite store in a temporary directory:

1. ``replay import`` of the converted BTS log (``--config`` with the 80 plain arms);
2. ``replay train --lam 0``: the EM head (logistic loss) fitted on the older
   80 % of the log, Platt-recalibrated, Brier score and reliability on the
   newer 20 %, saved as a snapshot;
3. ``replay evaluate --policy uniform --estimators ips,snips,dm,dr,switch-dr
   --model SNAPSHOT`` over the whole log (no ``--config``: the store knows its
   arms), and ``--policy logging`` for the log's own rate.

OBP (0.4.1) runs on the same log in its own way, as its examples do:
``OpenBanditDataset`` (its own feature engineering: one-hot user features,
label-encoded item features as action context; re-implemented here only to
pass keyword arguments newer pandas requires), ``RegressionModel`` with
scikit-learn's ``LogisticRegression`` cross-fitted over 3 folds, and
``OffPolicyEvaluation`` with IPW, SNIPW, DM, DR and Switch-DR (τ = 10, our
default), with its bootstrap intervals (1,000 resamples).

Exit status 1 when IPS/SNIPS differ from OBP's by more than 1e-12, or (for
ours) DM is not within 2× of the truth or Switch-DR's interval misses it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime

K_ITEMS = 80
ESTIMATORS = ("ips", "snips", "dm", "dr", "switch-dr")

OBP_SCRIPT = r'''
import json, sys, warnings
warnings.filterwarnings("ignore")
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import LabelEncoder
from obp.dataset import OpenBanditDataset
from obp.ope import (OffPolicyEvaluation, RegressionModel, InverseProbabilityWeighting,
                     SelfNormalizedInverseProbabilityWeighting, DirectMethod, DoublyRobust, SwitchDoublyRobust)

class OBD(OpenBanditDataset):
    def pre_process(self):
        # OBP 0.4.1's own feature engineering, with the keyword arguments newer pandas requires
        user_cols = self.data.columns.str.contains("user_feature")
        self.context = pd.get_dummies(self.data.loc[:, user_cols], drop_first=True).values.astype(float)
        item_feature_0 = self.item_context["item_feature_0"]
        item_feature_cat = self.item_context.drop(columns="item_feature_0").apply(LabelEncoder().fit_transform)
        self.action_context = pd.concat([item_feature_cat, item_feature_0], axis=1).values

if sys.argv[1] == "where":
    import obp.dataset.real as real, os
    print(os.path.join(os.path.dirname(real.__file__), "obd"))
    sys.exit(0)
t0 = __import__("time").perf_counter()
bts = OBD(behavior_policy="bts", campaign="all")
fb = bts.obtain_batch_bandit_feedback()
truth = OBD.calc_on_policy_policy_value_estimate(behavior_policy="random", campaign="all")
n, k, L = fb["n_rounds"], bts.n_actions, bts.len_list
dist = np.full((n, k, L), 1.0 / k)
rm = RegressionModel(n_actions=k, len_list=L, action_context=fb["action_context"],
                     base_model=LogisticRegression(max_iter=10000, C=100, random_state=12345))
est = rm.fit_predict(context=fb["context"], action=fb["action"], reward=fb["reward"], position=fb["position"],
                     pscore=fb["pscore"], n_folds=3, random_state=12345)
ope = OffPolicyEvaluation(bandit_feedback=fb, ope_estimators=[
    InverseProbabilityWeighting(), SelfNormalizedInverseProbabilityWeighting(), DirectMethod(), DoublyRobust(),
    SwitchDoublyRobust(tau=10.0)])
v = ope.estimate_policy_values(action_dist=dist, estimated_rewards_by_reg_model=est)
ci = ope.estimate_intervals(action_dist=dist, estimated_rewards_by_reg_model=est, n_bootstrap_samples=1000,
                            random_state=12345)
names = {"ipw": "ips", "snipw": "snips", "dm": "dm", "dr": "dr", "switch-dr": "switch-dr"}
print(json.dumps({"truth": float(truth), "n": int(n), "seconds": __import__("time").perf_counter() - t0,
                  "estimates": {names[a]: {"value": float(v[a]), "ci_low": float(ci[a]["95.0% CI (lower)"]),
                                           "ci_high": float(ci[a]["95.0% CI (upper)"])} for a in v}}))
'''


def find_obp_python(arg: str | None) -> str | None:
    """An interpreter that imports obp: ``arg``, else this one, else None."""
    for py in ([arg] if arg else []) + [sys.executable]:
        ok = subprocess.run([py, "-c", "import obp.ope, obp.dataset"], capture_output=True).returncode == 0
        if ok:
            return py
    return None


def convert(src: str, dst: str) -> int:
    """The OBD CSV as our CSV import's columns (one decision per impression); returns the row count."""
    rows = 0
    with open(src, encoding="utf-8", newline="") as fh, open(dst, "w", encoding="utf-8", newline="") as out:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["request_id", "ts", "domain", "features", "arm", "propensity", "em", "tokens"])
        for row in csv.DictReader(fh):
            feats: dict[str, float | str] = {f"user_{j}": row[f"user_feature_{j}"] for j in range(4)}
            for item in range(K_ITEMS):
                x = float(row[f"user-item_affinity_{item}"])
                if x:
                    feats[f"affinity_{item}"] = x
            ts = datetime.fromisoformat(row["timestamp"]).timestamp()
            w.writerow([f"obd-bts-{row['']}", repr(ts), f"position_{row['position']}",
                        json.dumps(feats, separators=(",", ":")), row["item_id"], row["propensity_score"],
                        row["click"], 0])
            rows += 1
    return rows


def mean_click(path: str) -> float:
    with open(path, encoding="utf-8", newline="") as fh:
        clicks = [int(r["click"]) for r in csv.DictReader(fh)]
    return sum(clicks) / len(clicks)


def cli(*args: str) -> dict:
    """``stopbandit ARGS --json`` in a subprocess; its JSON report."""
    cmd = [sys.executable, "-m", "stopbandit.cli", *args, "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode not in (0,):
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def em(est: dict) -> dict:
    e = est["em"]
    return {"value": e["value"], "ci_low": e["ci_low"], "ci_high": e["ci_high"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--obd", help="folder with bts/all/all.csv and random/all/all.csv (default: obp's install)")
    ap.add_argument("--obp-python", help="a Python that imports obp, for OBP's figures and the data's location")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    obp_py = find_obp_python(args.obp_python)
    obd = args.obd
    if obd is None and obp_py is not None:
        obd = subprocess.run([obp_py, "-c", OBP_SCRIPT, "where"], capture_output=True, text=True,
                             check=True).stdout.strip()
    if obd is None or not os.path.exists(os.path.join(obd, "bts", "all", "all.csv")):
        print("skipped: the Open Bandit Dataset sample ships inside Open Bandit Pipeline, which is not installed "
              "(pip install --no-deps obp==0.4.1 && pip install scikit-learn pandas seaborn, or pass "
              "--obp-python PY / --obd DIR)")
        return

    bts, rnd = (os.path.join(obd, p, "all", "all.csv") for p in ("bts", "random"))
    truth = mean_click(rnd)
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "bts.csv")
        rows = convert(bts, log)
        config = os.path.join(tmp, "arms.toml")
        with open(config, "w", encoding="utf-8") as fh:
            fh.write("".join(f'[[arms]]\nname = "action_{i}"\nplain = true\n\n' for i in range(K_ITEMS)))
        db = f"sqlite:///{os.path.join(tmp, 'obd.db')}"
        t0 = time.perf_counter()
        imp = cli("replay", "import", "--db", db, "--config", config, log)
        if imp["inserted"] != rows:
            sys.exit(f"imported {imp['inserted']} of {rows} rows: {imp['error_lines'][:3]}")
        train = cli("replay", "train", "--db", db, "--lam", "0", "--no-progress")
        common = ("--db", db, "--model", train["snapshot"], "--lam", "0", "--no-progress", "--jobs", "1")
        uni = cli("replay", "evaluate", "--policy", "uniform", "--estimators", ",".join(ESTIMATORS), *common)
        own = cli("replay", "evaluate", "--policy", "logging", "--estimators", "ips,dm,dr", *common)
        ours_s = time.perf_counter() - t0

    ours = {name: em(uni["estimates"][name]) for name in ESTIMATORS}
    held = train["calibration"]["held_out"]
    out = {
        "rows": rows, "truth": truth, "log_own_rate": own["estimates"]["ips"]["em"]["value"],
        "ours": ours, "ours_seconds": round(ours_s, 1),
        "ours_logging_dm": own["estimates"]["dm"]["em"]["value"],
        "calibration": {"fit": train["calibration"]["fit"],
                        "held_out_brier_raw": held["raw"]["brier"], "held_out_brier": held["model"]["brier"],
                        "held_out_mean_prediction_raw": held["raw"]["mean_prediction"],
                        "held_out_mean_prediction": held["model"]["mean_prediction"],
                        "held_out_mean_em": held["model"]["mean_em"]},
    }
    ok = 0.5 * truth <= ours["dm"]["value"] <= 2.0 * truth
    ok = ok and ours["switch-dr"]["ci_low"] <= truth <= ours["switch-dr"]["ci_high"]
    out["dm_within_2x"] = 0.5 * truth <= ours["dm"]["value"] <= 2.0 * truth
    out["switch_dr_covers"] = ours["switch-dr"]["ci_low"] <= truth <= ours["switch-dr"]["ci_high"]
    if obp_py is not None and args.obd is None:
        done = subprocess.run([obp_py, "-c", OBP_SCRIPT, "run"], capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"OBP failed: {done.stderr[-2000:]}")
        obp = json.loads(done.stdout.strip().splitlines()[-1])
        out["obp"] = obp
        agree = all(abs(ours[n]["value"] - obp["estimates"][n]["value"]) <= 1e-12 for n in ("ips", "snips"))
        out["ips_snips_agree_with_obp"] = agree
        ok = ok and agree and obp["truth"] == truth
    if args.json:
        print(json.dumps(out))
    else:
        print(f"rows {rows}, truth (on-policy mean click of the uniform-random log) {truth:.4f}, "
              f"the BTS log's own rate {out['log_own_rate']:.4f}")
        print(f"{'estimator':>10} | {'ours':>8} {'95% interval':>20} | {'OBP':>8} {'95% interval (bootstrap)':>24}")
        for n in ESTIMATORS:
            o = ours[n]
            line = f"{n:>10} | {o['value']:.5f} [{o['ci_low']:.5f}, {o['ci_high']:.5f}] |"
            if "obp" in out:
                b = out["obp"]["estimates"][n]
                line += f" {b['value']:.5f} [{b['ci_low']:.5f}, {b['ci_high']:.5f}]"
            print(line)
        for key in ("ours_logging_dm", "calibration", "dm_within_2x", "switch_dr_covers",
                    "ips_snips_agree_with_obp", "ours_seconds"):
            if key in out:
                print(f"{key}: {out[key]}")
        if "obp" in out:
            print(f"obp_seconds: {out['obp']['seconds']:.1f}")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
