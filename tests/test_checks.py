"""Degenerate comparisons: a run says when cells labelled differently compare nothing."""

from __future__ import annotations

import json

import pytest
from run_args import PROMPT, SMALL, compare_args

from llm_dit.cli import main
from llm_dit.experiments.checks import degenerate


def _rec(name: str, fp: str, key: str, picture: str = "", **extra) -> dict:
    return {"name": name, "status": "done", "success": True, "fingerprint": fp, "generation_key": key,
            "picture_digest": picture or fp, "generation": {"seed": 42}, "params": {},
            "recipe": {"blend": "interpolate"}, "pure_text": False, "conditioning": {"sources": []}, **extra}


def test_each_kind_of_finding_and_what_is_not_one():
    base = _rec("text_only", "f0", "k0", pure_text=True)
    found = degenerate([
        base,
        _rec("alpha0", "f0", "k0"),  # the baseline by construction (same generation key): not a finding
        _rec("style_alpha0.1", "f0", "k1"),  # a VL recipe conditioned as the baseline
        _rec("a", "f1", "k2"), _rec("b", "f1", "k3"),  # two recipes, one conditioning
        _rec("c", "f2", "k4", picture="p"), _rec("d", "f3", "k5", picture="p"),  # two conditionings, one picture
        _rec("e_seed1", "f4", "k6", generation={"seed": 1}), _rec("e_seed2", "f4", "k7", generation={"seed": 2}),
        _rec("replace_alpha0.3", "f5", "k8", recipe={"blend": "replace"}, params={"alpha": 0.3}),
        _rec("masked", "f6", "k9", recipe={"blend": "interpolate", "outlier_mask": "zero", "outlier_threshold": 10.0},
             conditioning={"sources": [{"outliers": {"masked_dimensions": []}}]}),
        _rec("masked_some", "f7", "k10", recipe={"blend": "interpolate", "outlier_mask": "zero",
                                                "outlier_threshold": 2.0},
             conditioning={"sources": [{"outliers": {"masked_dimensions": [3, 7]}}]}),
        _rec("intra_masked", "f8", "k11", recipe={"blend": "interpolate", "outlier_mask": "clamp",
                                                 "outlier_threshold": 10.0},
             conditioning={"sources": [{"image_part": {"outliers": {"masked_dimensions": []}},
                                        "text_part": {"outliers": {"masked_dimensions": []}}}]}),
        {"name": "failed", "status": "failed", "success": False},
    ])
    kinds = {(w["kind"], tuple(w["cells"])) for w in found}
    assert kinds == {
        ("equals_baseline", ("style_alpha0.1",)),
        ("same_conditioning", ("a", "b")),
        ("same_picture", ("c", "d")),
        ("alpha_ignored", ("replace_alpha0.3",)),
        ("mask_noop", ("masked", "intra_masked")),
    }
    texts = {w["kind"]: w["text"] for w in found}
    assert texts["mask_noop"] == ("masked and intra_masked: the outlier mask masked 0 dimensions at threshold 10, "
                                  "so it is no mask (try a lower outlier threshold)")
    assert "text-only baseline text_only" in texts["equals_baseline"]


def _lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("warning: ")]


def test_a_no_op_mask_is_said_and_a_lower_threshold_masks(refs, tmp_path, capsys):
    out = tmp_path / "t10"
    assert main(compare_args("outlier_masking", refs, out)) == 0
    lines = _lines(capsys.readouterr().out)
    assert any("the outlier mask masked 0 dimensions at threshold 10" in ln for ln in lines)
    assert any("layer-6_mask-none, layer-6_mask-zero and layer-6_mask-restore: different recipes, bit-identical "
               "conditioning" in ln for ln in lines)
    meta = json.loads((out / "metadata.json").read_text())
    assert [w["text"] for w in meta["warnings"]] == [ln.removeprefix("warning: ") for ln in lines]
    html = (out / "report.html").read_text()
    assert "Comparisons that compare nothing" in html and html.index("class=warn") < html.index("<dl>")

    out = tmp_path / "t2"
    assert main([*compare_args("outlier_masking", refs, out), "--outlier-threshold", "2"]) == 0
    assert _lines(capsys.readouterr().out) == []
    meta = json.loads((out / "metadata.json").read_text())
    masked = {r["name"]: r["conditioning"]["sources"][0]["outliers"]["masked_dimensions"]
              for r in meta["results"] if "mask-" in r["name"] and "none" not in r["name"]}
    assert masked and all(len(m) > 0 for m in masked.values())
    assert meta["details"] == {"recipe": {"outlier_threshold": 2.0}}
    assert all(r["recipe"]["outlier_threshold"] == 2.0 for r in meta["results"] if not r["pure_text"])


def test_replace_labelled_by_alpha_is_said(refs, tmp_path, capsys):
    out = tmp_path / "replace"
    assert main(["sweep", "--image", refs[0], "--prompt", PROMPT, "--blends", "replace,interpolate",
                 "--alphas", "0.3,0.6", "--out", str(out), *SMALL]) == 0
    lines = _lines(capsys.readouterr().out)
    assert "warning: alpha0.3_replace and alpha0.6_replace: the replace blend ignores alpha; the alpha in their " \
           "labels changes nothing" in lines
    assert any(ln.startswith("warning: alpha0.3_replace and alpha0.6_replace: different recipes, bit-identical")
               for ln in lines)
    assert len(lines) == 2  # the interpolate cells differ


@pytest.mark.parametrize("args, message", [
    (["--set", "alpha=0.5"], "alpha_sweep varies alpha itself; sweep it instead"),
    (["--set", "colour=red"], "'colour' is not a recipe field"),
    (["--set", "outlier_threshold=0.5"], "outlier_threshold"),
    (["--set", "novalue"], "--set takes FIELD=VALUE"),
])
def test_compare_refuses_bad_recipe_overrides(refs, tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    assert main([*compare_args("alpha_sweep", refs, out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not out.exists()
