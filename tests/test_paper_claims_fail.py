"""Input CMAP and the additional desiderata can fail: each stores a baseline, passes on the unchanged model and
fails a planted change of mechanism (small samples for time; the audit's full-size rows are in docs/audit.md)."""

import json
import shutil
from pathlib import Path

import pytest

from mechbench.api import get_model
from mechbench.baselines import Staging
from mechbench.calibrate import plant
from mechbench.claims import ClaimFailed, Run, Settings, get
from mechbench.results import ResultsWriter

BASELINES = Path(__file__).resolve().parents[1] / "baselines"


def settings(tmp_path, limit, update=False, staging=None, baseline_model=None, base_model=None):
    return Settings(
        models=(),
        base_model=base_model,
        baseline_model=baseline_model,
        circuits=("toy-llama",),
        device="cpu",
        dtype="float32",
        limit=limit,
        seed=0,
        baselines_dir=tmp_path / "baselines",
        update_baselines=update,
        results_dir=tmp_path / "results",
        require_models=False,
        staging=staging,
    )


def measure(claim_name, test_name, s, model):
    claim = get(claim_name)
    [test] = [t for t in claim.tests if t.name == test_name]
    run = Run(claim, s, model, circuit_name="toy-llama", results=ResultsWriter(s.results_dir))
    test.measure(run)


def stores_passes_and_fails(tmp_path, claim, test, model, planted, limit, recheck=True, **planted_settings):
    # what the claims read, and none of their own records (stored at full size; these are at --limit)
    (tmp_path / "baselines").mkdir()
    for name in ("circuits", "dcm"):
        shutil.copy(BASELINES / f"{name}.json", tmp_path / "baselines")
    heads = json.loads((BASELINES / "dcm_additional.json").read_text())  # the additional desiderata's DCM heads
    heads["records"] = [r for r in heads["records"] if r["measure"] == "dcm"]
    (tmp_path / "baselines" / "dcm_additional.json").write_text(json.dumps(heads))
    staging = Staging()
    measure(claim, test, settings(tmp_path, limit, update=True, staging=staging), get_model(model))
    staging.commit()  # what --update-baselines writes when the run ends
    if recheck:  # unchanged: within tolerance (the suites check the unchanged models at full size anyway)
        measure(claim, test, settings(tmp_path, limit), get_model(model))
    with pytest.raises(ClaimFailed, match="out of tolerance"):
        measure(claim, test, settings(tmp_path, limit, baseline_model=model, **planted_settings), planted)


def test_input_cmap_fails_when_the_fine_tunes_structure_readers_are_silenced(tmp_path):
    """toy-goat's four leading structure readers silenced: the value fetchers' queries and keys that read them move
    the patched base's accuracy out of the bound."""
    planted = get_model(str(plant("toy-goat", "readers", tmp_path / "plant", "toy-llama")))
    stores_passes_and_fails(tmp_path, "input_cmap", "input_cmap", "toy-goat", planted, 200, base_model="toy-llama")


def test_the_additional_desiderata_fail_when_the_structure_readers_are_silenced(tmp_path):
    """toy-llama's four leading structure readers silenced: the position transmitters' stored heads, patched from the
    altered sources, move the planted model to other targets than the model's. (Silencing the two transmitters
    themselves moves the toy's percentages by about 1.4 points of 13: on the toy zoo they carry little position;
    docs/audit.md.)"""
    planted = get_model(str(plant("toy-llama", "readers", tmp_path / "plant", "toy-llama")))
    # 100 pairs a draw: the bound (about 5.6 points) below the plant's drop (about 7 of 13.5); the unchanged model's
    # check is the suites' own, at full size, for time
    stores_passes_and_fails(
        tmp_path, "dcm_additional", "dcm_additional_patched", "toy-llama", planted, 100, recheck=False
    )
