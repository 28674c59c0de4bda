"""The mix stage: exact per-class counts, seeded sampling, untouched val/test,
and a logged manifest that `train --dataset-run` reads back unchanged.

Allocation and sampling are tested on in-memory manifests; the stage runs end
to end on tiny PNG folders, in conftest's temporary tracking store, one
experiment per test.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from imaging.errors import InputError
from imaging.images import encode_png
from imaging.manifest import Manifest
from imaging.mixing import allocate, format_note, largest_remainder, mix_manifests

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["a", "b", "c"]


# --- allocation ---------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=12).filter(lambda w: sum(w) > 0), st.integers(0, 5000))
def test_largest_remainder_sums_exactly_and_rounds_each_quota_down_or_up(weights, total):
    counts = largest_remainder(weights, total)
    assert sum(counts) == total
    for count, weight in zip(counts, weights):
        quota = total * weight / sum(weights)
        assert math.floor(quota) <= count <= math.ceil(quota)


def test_largest_remainder_gives_leftovers_to_the_largest_remainders():
    assert largest_remainder([1, 1, 1], 10) == [4, 3, 3]  # tie: the earlier one
    assert largest_remainder([5, 3, 2], 7) == [4, 2, 1]  # quotas 3.5, 2.1, 1.4
    assert largest_remainder([2, 1], 0) == [0, 0]


def test_the_1348_image_example_at_6_to_4_is_809_synthetic_and_539_real():
    even = allocate({"a": 225, "b": 225, "c": 225, "d": 225, "e": 224, "f": 224}, 0.6)
    assert even == {"a": (135, 90), "b": (135, 90), "c": (135, 90), "d": (135, 90), "e": (135, 89), "f": (134, 90)}

    counts = {"a": 300, "b": 250, "c": 200, "d": 250, "e": 174, "f": 174}
    allocation = allocate(counts, 0.6)
    assert sum(s for s, _ in allocation.values()) == 809
    assert sum(r for _, r in allocation.values()) == 539
    for label, (synthetic, real) in allocation.items():
        assert synthetic + real == counts[label]  # total = real size: every class keeps its size
        assert abs(synthetic - 0.6 * counts[label]) < 1  # the same fraction in every class, to the image


def test_ratio_0_is_all_real_and_ratio_1_all_synthetic():
    counts = {"a": 7, "b": 5, "c": 3}
    assert allocate(counts, 0.0) == {"a": (0, 7), "b": (0, 5), "c": (0, 3)}
    assert allocate(counts, 1.0) == {"a": (7, 0), "b": (5, 0), "c": (3, 0)}


def test_a_smaller_total_keeps_the_class_proportions():
    allocation = allocate({"a": 600, "b": 400, "c": 348}, 0.5, total=500)
    totals = {label: s + r for label, (s, r) in allocation.items()}
    assert sum(totals.values()) == 500
    assert totals == {"a": 223, "b": 148, "c": 129}  # 222.55, 148.37, 129.08 by largest remainder
    assert sum(s for s, _ in allocation.values()) == 250


def test_a_larger_total_takes_the_extra_from_synthetic_images():
    allocation = allocate({"a": 10, "b": 10}, 0.75, total=40)
    assert allocation == {"a": (15, 5), "b": (15, 5)}


def test_add_mode_keeps_every_real_image_and_adds_ratio_over_one_minus_ratio_as_many():
    counts = {"a": 10, "b": 20, "c": 30}
    assert allocate(counts, 0.5, mode="add") == {"a": (10, 10), "b": (20, 20), "c": (30, 30)}
    assert allocate(counts, 0.6, mode="add") == {"a": (15, 10), "b": (30, 20), "c": (45, 30)}  # 1.5x
    assert allocate(counts, 0.0, mode="add") == {"a": (0, 10), "b": (0, 20), "c": (0, 30)}
    assert allocate(counts, 0.2, mode="add") == {"a": (2, 10), "b": (5, 20), "c": (8, 30)}  # 15 = 2.5 + 5 + 7.5


@pytest.mark.parametrize("ratio", [-0.1, 1.5, float("nan")])
def test_a_ratio_outside_0_1_is_refused(ratio):
    with pytest.raises(InputError, match=r"ratio .* is outside \[0, 1\]; pass the synthetic fraction"):
        allocate({"a": 10, "b": 10}, ratio)


def test_add_mode_refuses_ratio_1_and_a_total():
    with pytest.raises(InputError, match="ratio 1 with mode=add asks for infinitely many synthetic images; use mode=replace"):
        allocate({"a": 10, "b": 10}, 1.0, mode="add")
    with pytest.raises(InputError, match="total 50 applies only to mode=replace"):
        allocate({"a": 10, "b": 10}, 0.5, total=50, mode="add")
    with pytest.raises(InputError, match="mode 'blend' is not one of replace, add"):
        allocate({"a": 10, "b": 10}, 0.5, mode="blend")


def test_a_total_needing_more_real_images_than_exist_is_refused():
    with pytest.raises(InputError, match=r"total 40 at ratio 0.0 needs more real training images than there are \(class 'a' needs 20 real images but has 10; class 'b' needs 20 real images but has 10\); lower total \(the real train split has 20\)"):
        allocate({"a": 10, "b": 10}, 0.0, total=40)


# --- sampling -----------------------------------------------------------------

def _manifest(per_class: dict[str, int], source: str, run_id: str = "") -> Manifest:
    rows = []
    for label, count in per_class.items():
        for index in range(count):
            split = "train"
            if source == "real" and index >= count - 2:  # the last two of each class are val and test
                split = "val" if index == count - 2 else "test"
            rows.append({"path": f"{source}/{label}/{index:03d}.png", "label": label, "split": split, "source": source, "run_id": run_id, "sha256": f"{source}{label}{index}"})
    frame = pd.DataFrame(rows)
    if source == "synthetic":
        frame["seed"] = [str(i) for i in range(len(frame))]  # an extra column, as a synthesize run logs
    return Manifest(frame, "/data/real", f"{source}-set")


REAL = _manifest({"a": 12, "b": 12, "c": 12}, "real")  # 10 train + 1 val + 1 test per class
SYNTHETIC = _manifest({"a": 12, "b": 12, "c": 12}, "synthetic", run_id="synthrun")


def test_mixing_takes_the_allocated_rows_of_each_class_and_source():
    mixed = mix_manifests(REAL, SYNTHETIC, 0.6, None, "replace", seed=0)
    train = mixed.frame[mixed.frame["split"] == "train"]
    counts = train.groupby(["label", "source"]).size().to_dict()
    assert counts == {(c, "synthetic"): 6 for c in CLASSES} | {(c, "real"): 4 for c in CLASSES}
    synthetic = train[train["source"] == "synthetic"]
    assert set(synthetic["run_id"]) == {"synthrun"} and synthetic["path"].str.startswith("synthetic/").all()
    assert (train.loc[train["source"] == "real", "seed"] == "").all() and (synthetic["seed"] != "").all()  # extra columns ride along
    assert mixed.root == REAL.root and mixed.classes == REAL.classes
    assert not train.duplicated(["path", "run_id"]).any()


def test_same_seed_same_manifest_and_another_seed_another():
    first = mix_manifests(REAL, SYNTHETIC, 0.5, None, "replace", seed=3)
    again = mix_manifests(REAL, SYNTHETIC, 0.5, None, "replace", seed=3)
    other = mix_manifests(REAL, SYNTHETIC, 0.5, None, "replace", seed=4)
    assert first.digest == again.digest
    assert first.frame.equals(again.frame)
    assert other.digest != first.digest


def test_val_and_test_are_the_real_ones_untouched():
    mixed = mix_manifests(REAL, SYNTHETIC, 1.0, None, "replace", seed=0)
    for split in ("val", "test"):
        pd.testing.assert_frame_equal(mixed.split(split).frame[REAL.frame.columns], REAL.split(split).frame, check_like=False)
    assert (mixed.split("train").frame["source"] == "synthetic").all()


def test_a_higher_ratio_replaces_more_real_images_and_keeps_the_rest():
    low = mix_manifests(REAL, SYNTHETIC, 0.3, None, "replace", seed=5).split("train").frame
    high = mix_manifests(REAL, SYNTHETIC, 0.7, None, "replace", seed=5).split("train").frame
    real = lambda frame: set(frame.loc[frame["source"] == "real", "path"])  # noqa: E731
    synthetic = lambda frame: set(frame.loc[frame["source"] == "synthetic", "path"])  # noqa: E731
    assert real(high) < real(low)
    assert synthetic(low) < synthetic(high)


def test_too_few_synthetic_images_of_a_class_is_refused_with_the_counts():
    few = _manifest({"a": 12, "b": 5, "c": 3}, "synthetic")
    with pytest.raises(InputError, match=r"not enough synthetic images for ratio 0.8 \(class 'b' needs 8, has 5; class 'c' needs 8, has 3\); synthesize at least 8 per class"):
        mix_manifests(REAL, few, 0.8, None, "replace", seed=0)


def test_synthetic_classes_must_match_the_real_ones():
    other = _manifest({"a": 12, "b": 12, "z": 12}, "synthetic")
    with pytest.raises(InputError, match=r"the synthetic images' classes do not match the real ones \(missing \['c'\]; extra \['z'\]\)"):
        mix_manifests(REAL, other, 0.5, None, "replace", seed=0)


def _write_images(root: Path, classes, per_class: int, shape, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for label in classes:
        (root / label).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            (root / label / f"{index:03d}.png").write_bytes(encode_png(rng.integers(0, 256, shape, dtype=np.uint8)))
    return root


def test_image_size_or_channel_mismatch_is_an_error_unless_converting(tmp_path):
    grey = sorted(_write_images(tmp_path / "grey", ["a"], 3, (16, 16), 0).rglob("*.png"))
    colour = sorted(_write_images(tmp_path / "colour", ["a"], 3, (20, 24, 3), 1).rglob("*.png"))
    assert format_note(grey, grey, convert=False) is None
    with pytest.raises(InputError, match=r"synthetic images are 24x20x3 \(width x height x channels\) but the real ones are 16x16x1; .* or pass --convert true"):
        format_note(grey, colour, convert=False)
    assert format_note(grey, colour, convert=True) == "synthetic images are 24x20x3; they will be converted to the real images' 16x16x1 when decoded"


# --- the stage, end to end ----------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Real and synthetic image folders; runs go to conftest's temporary tracking store."""
    root = tmp_path_factory.mktemp("mix")
    return {
        "root": root,
        "real": _write_images(root / "real", CLASSES, 10, (16, 16), 0),  # 8 train, 1 val, 1 test per class
        "synthetic": _write_images(root / "synthetic", CLASSES, 12, (16, 16), 1),
        "colour": _write_images(root / "colour", CLASSES, 12, (20, 20, 3), 2),
    }


def _run_count(experiment_id: str) -> int:
    import mlflow

    return len(mlflow.search_runs([experiment_id], output_format="list"))


def _logged_manifest(run_id: str) -> Manifest:
    import mlflow

    return Manifest.load(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="dataset")))


def test_the_stage_logs_the_mix_that_train_reads_back(store, experiment):
    from mlflow.tracking import MlflowClient

    from pipelines.mix import mix
    from tracking.lineage import load_manifest as load_training_manifest

    params = {"data": str(store["real"]), "synthetic_data": str(store["synthetic"]), "ratio": 0.5, "seed": 1}
    result = mix(params)
    run = MlflowClient().get_run(result.run_id)
    metrics = run.data.metrics
    for label in CLASSES:  # 8 real train images per class at 1:1
        assert metrics[f"mix/synthetic/{label}"] == 4 and metrics[f"mix/real/{label}"] == 4
    assert (metrics["mix/synthetic_total"], metrics["mix/real_total"], metrics["mix/synthetic_fraction"]) == (12, 12, 0.5)
    assert run.data.tags["synthmix.ratio"] == "0.5" and run.data.tags["synthmix.stage"] == "mix"
    assert run.data.tags["synthmix.synthetic_data"] == str(store["synthetic"].resolve())
    assert run.data.params["ratio"] == "0.5" and run.data.params["mode"] == "replace"

    mixed = result.manifest
    inputs = {next(t.value for t in entry.tags if t.key == "mlflow.data.context"): entry.dataset for entry in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test", "synthetic"}
    for split in ("train", "val", "test"):
        assert inputs[split].digest == mixed.split(split).digest

    logged = _logged_manifest(run.info.run_id)
    assert logged.digest == mixed.digest
    trained_on, skipped = load_training_manifest({"dataset_run": run.info.run_id, "data": "mnist5k"})
    assert trained_on.digest == mixed.digest and skipped is None  # no folder was scanned

    # synthetic rows from a folder carry absolute paths, which the real root leaves alone
    paths = logged.split("train").local_paths()
    synthetic = (logged.split("train").frame["source"] == "synthetic").to_numpy()
    assert all(Path(p).is_absolute() and str(p).startswith(str(store["synthetic"].resolve())) for p, s in zip(paths, synthetic) if s)
    assert all(Path(p).is_file() for p in paths)

    from imaging.datasets import scan_folder

    real, _ = scan_folder(store["real"])
    for split in ("val", "test"):
        assert logged.split(split).digest == real.split(split).digest

    again = mix(params, reuse=True)
    assert again.run_id == run.info.run_id and again.reused


def test_the_stage_mixes_a_synthesize_runs_images(store, experiment):
    import mlflow
    from mlflow.tracking import MlflowClient

    from imaging.datasets import scan_folder
    from pipelines.mix import mix

    # a stand-in synthesize run: images as artifacts, listed by its dataset/ manifest
    folder_manifest, _ = scan_folder(store["synthetic"], val_fraction=0, test_fraction=0)
    with mlflow.start_run(run_name="fake-synthesize") as synthesis:
        mlflow.set_tags({"synthmix.stage": "synthesize", "synthmix.generator": "dcgan"})
        mlflow.log_artifacts(str(store["synthetic"]), "images")
        frame = folder_manifest.frame.assign(path="images/" + folder_manifest.frame["path"], run_id=synthesis.info.run_id, source="synthetic", split="train")
        frame["seed"] = [str(i) for i in range(len(frame))]
        Manifest(frame, "", "dcgan-synthetic").save(store["root"] / "synthesis-manifest")
        mlflow.log_artifacts(str(store["root"] / "synthesis-manifest"), "dataset")

    result = mix({"data": str(store["real"]), "synthetic_run": synthesis.info.run_id, "ratio": 0.6, "mode": "add"})
    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["synthmix.synthetic_run"] == synthesis.info.run_id
    assert run.data.tags["synthmix.generator"] == "dcgan"
    assert (run.data.metrics["mix/synthetic_total"], run.data.metrics["mix/real_total"]) == (36, 24)  # 24 real + 1.5x as many
    assert run.data.metrics["mix/synthetic_fraction"] == 0.6

    logged = _logged_manifest(run.info.run_id)
    synthetic = logged.frame[logged.frame["source"] == "synthetic"]
    assert set(synthetic["run_id"]) == {synthesis.info.run_id} and synthetic["path"].str.startswith("images/").all()
    assert (synthetic["seed"] != "").all()
    assert all(Path(p).is_file() for p in logged.split("train").local_paths())


def test_a_size_mismatch_stops_before_a_run_unless_converting(store, experiment):
    from mlflow.tracking import MlflowClient

    from pipelines.mix import mix

    params = {"data": str(store["real"]), "synthetic_data": str(store["colour"]), "ratio": 0.5}
    before = _run_count(experiment)
    with pytest.raises(InputError, match=r"synthetic images are 20x20x3 \(width x height x channels\) but the real ones are 16x16x1"):
        mix(params)
    assert _run_count(experiment) == before

    result = mix({**params, "convert": True})
    note = MlflowClient().get_run(result.run_id).data.tags["synthmix.convert_note"]
    assert note == "synthetic images are 20x20x3; they will be converted to the real images' 16x16x1 when decoded"
    assert _logged_manifest(result.run_id).frame["path"].str.endswith(".png").all()  # still the original files


@pytest.mark.parametrize(
    "change, message",
    [
        ({"synthetic_data": ""}, r"neither of synthetic_run and synthetic_data given; pass exactly one"),
        ({"synthetic_run": "0123abcd"}, r"both of synthetic_run and synthetic_data given; pass exactly one"),
        ({"ratio": 0.9}, r"not enough synthetic images for ratio 0.9 \(class 'a' needs 15, has 12; class 'b' needs 14, has 12; class 'c' needs 14, has 12\); synthesize at least 15 per class"),
        ({"total": 100, "ratio": 0.0}, r"total 100 at ratio 0.0 needs more real training images than there are \(class 'a' needs 34 real images but has 8"),
        ({"synthetic_data": "missing-folder"}, r"synthetic_data missing-folder is not a folder"),
    ],
)
def test_bad_input_stops_before_a_run(store, experiment, change, message):
    from pipelines.mix import mix

    before = _run_count(experiment)
    with pytest.raises(InputError, match=message):
        mix({"data": str(store["real"]), "synthetic_data": str(store["synthetic"]), "total": 24 * 2, **change})
    assert _run_count(experiment) == before


def test_the_command_exits_2_with_one_line_for_a_bad_ratio(store, experiment):
    from pipelines.mix import command

    before = _run_count(experiment)
    result = CliRunner().invoke(command, ["--data", str(store["real"]), "--synthetic-data", str(store["synthetic"]), "--ratio", "1.5"])
    assert result.exit_code == 2
    assert "error: ratio 1.5 is outside [0, 1]; pass the synthetic fraction of the training set" in result.output
    assert _run_count(experiment) == before


def test_help_is_light_and_explains_every_option():
    code = "import sys, pipelines.mix; print(sorted(m for m in ('mlflow', 'pandas', 'numpy', 'torch') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
    from pipelines.mix import command

    text = CliRunner().invoke(command, ["--help"], terminal_width=200).output
    for option in ("--data", "--synthetic-run", "--synthetic-data", "--ratio", "--total", "--mode", "--convert", "--seed", "--val-fraction"):
        assert option in text
    assert "default: 0.5" in text and "replace|add" in text
