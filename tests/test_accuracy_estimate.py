"""With --calib-data, every run estimates the pruned model's accuracy on held-out train images:
top-1 agreement with the dense model and the relative logit error, against a brute-force count;
a plan that breaks the model (agreement under 50%) gets a warning, in the report and on stderr."""
import json

import pytest
import torch

import dimap_struct
from dimap_struct.cli import compress as cli
from dimap_struct.deploy.evaluate import agreement
from shared_data import mnist_dir

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(mnist_dir() is None, reason="needs ../shared/data/mnist")]


def test_agreement_against_a_count_by_hand():
    dense = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [1.0, 0.0, 4.0], [0.0, 0.0, 1.0]])
    pruned = torch.tensor([[2.0, 1.0, 0.0], [3.0, 2.0, 1.0], [1.0, 0.0, 4.0], [0.0, 2.0, 1.0]])
    labels = torch.tensor([0, 0, 2, 1])
    result = agreement(dense, pruned, labels, "hand")
    assert result["agreement_top1"] == 50.0  # rows 0 and 2 agree
    assert result["dense_top1"] == 50.0 and result["pruned_top1"] == 100.0  # dense misses rows 1 and 3
    error = sum(float((p - d) @ (p - d)) for p, d in zip(pruned, dense)) ** 0.5 / float(dense.pow(2).sum()) ** 0.5
    assert result["relative_logit_error"] == pytest.approx(error)


def test_a_run_with_data_reports_its_estimate_on_images_calibration_did_not_use():
    result = dimap_struct.compress("reference", 0.7, calib_data=str(mnist_dir()), calib_images=32)
    estimate = result.report.accuracy_estimate
    assert estimate["images"] == 32 and "not used to calibrate" in estimate["source"]
    assert 50 <= estimate["agreement_top1"] <= 100 and 0 <= estimate["relative_logit_error"] < 1
    assert not any(note.startswith("warning:") for note in result.report.notes)
    assert dimap_struct.compress("reference", 0.7).report.accuracy_estimate is None  # no data, no estimate


def test_a_plan_that_breaks_the_model_is_warned_about(capsys):
    code = cli.main(["reference", "--flops", "0.1", "--min-heads", "0", "--min-mlp", "0", "--recovery", "none",
                     "--calib-data", str(mnist_dir()), "--calib-images", "32", "--json", "--quiet"])
    out, err = capsys.readouterr()
    estimate = json.loads(out)["accuracy_estimate"]
    assert code == 0 and estimate["agreement_top1"] < 50
    assert "warning: the pruned model agrees with the dense model on only" in err
