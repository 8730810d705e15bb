"""The experiment's tables: results shaped like Icon²'s Table 1, costs like its Table 4."""

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

__all__ = ["CHARGED", "cost_table", "results_table"]


#: Data-construction stages charged to each source (synthesis is common to all and excluded).
CHARGED: dict[str, tuple[str, ...]] = {
    "icon2": ("icon2/extract", "icon2/filter", "icon2/pairs"),
    "icon2_unfiltered": ("icon2/extract", "icon2/filter", "icon2_unfiltered/pairs"),
    "sp": ("sp/pairs",),
    "sampling_ranking": ("sampling_ranking/pairs",),
    "self_rewarding": ("self_rewarding/pairs",),
}


def cost_table(
    costs: Mapping[str, Mapping[str, Any]], pairs_made: Mapping[str, int]
) -> pd.DataFrame:
    """Per source: seconds and forward tokens of each stage and in total per kept pair (Table 4's shape).

    A source's ``pairs`` stage includes its judge (shown separately as ``judge``); ``icon2`` and
    ``icon2_unfiltered`` are charged the shared direction extraction and consistency scoring in
    full. Instruction synthesis, common to every source, is listed on its own and not charged.
    """
    rows = []
    for source, made in pairs_made.items():
        stages = CHARGED[source]
        judge = costs.get(f"{source}/judge", {})
        seconds = sum(costs.get(s, {}).get("seconds", 0.0) for s in stages)
        tokens = sum(
            costs.get(s, {}).get("forward_tokens", 0)
            + (judge.get("forward_tokens", 0) if s.endswith("/pairs") else 0)
            for s in stages
        )
        gen = costs.get(f"{source}/pairs", {})
        row = {
            "source": source,
            "extract s": costs.get("icon2/extract", {}).get("seconds", 0.0)
            if "icon2/extract" in stages
            else 0.0,
            "filter s": costs.get("icon2/filter", {}).get("seconds", 0.0)
            if "icon2/filter" in stages
            else 0.0,
            "generate s": gen.get("seconds", 0.0) - judge.get("seconds", 0.0),
            "judge s": judge.get("seconds", 0.0),
            "pairs made": made,
            "total s": seconds,
            "s per pair": seconds / made if made else math.nan,
            "forward tokens": tokens,
            "tokens per pair": tokens / made if made else math.nan,
            "dpo s": costs.get(f"{source}/dpo", {}).get("seconds", math.nan),
        }
        rows.append(row)
    df = pd.DataFrame(rows)
    if "icon2" in set(df["source"]):
        icon2 = df.loc[df["source"] == "icon2", "s per pair"].iloc[0]
        df["icon2 ÷ this (s/pair)"] = [icon2 / v if v else math.nan for v in df["s per pair"]]
    return df


def results_table(result: Mapping[str, Any]) -> pd.DataFrame:
    """One row per system, per judge its win rate and LC win rate against the reference (Table 1's shape)."""
    rows = []
    for system, by_judge in result["comparisons"].items():
        row: dict[str, Any] = {"system": system}
        order = result.get("judge_order") or sorted(by_judge)
        for judge in order:
            if judge not in by_judge:
                continue
            c = by_judge[judge]
            row[f"{judge} WR"] = _ci(c["win_rate"])
            row[f"{judge} LC WR"] = _ci(c["lc_win_rate"])
        stats = result["stats"].get(system, {})
        row["refusal (harmful)"] = stats.get("refusal_harmful")
        row["refusal (benign)"] = stats.get("refusal_benign")
        row["tokens"] = stats.get("mean_tokens")
        rows.append(row)
    ref = result["reference"]
    stats = result["stats"].get(ref, {})
    rows.append(
        {
            "system": f"{ref} (reference)",
            "refusal (harmful)": stats.get("refusal_harmful"),
            "refusal (benign)": stats.get("refusal_benign"),
            "tokens": stats.get("mean_tokens"),
        }
    )
    return pd.DataFrame(rows)


def _ci(x: Mapping[str, Any] | None) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x['value']:.1f} [{100 * x['low']:.1f}, {100 * x['high']:.1f}]"
