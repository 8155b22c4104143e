"""Post-training analyses of a trained classifier (plain `nn.Module`s; no Lightning here)."""

from regbench.analysis.mechanism import (
    ACTIVATIONS,
    ECE_BINS,
    expected_calibration_error,
    measure,
    predict_probs,
    predictive_entropy,
)

__all__ = ["ACTIVATIONS", "ECE_BINS", "expected_calibration_error", "measure", "predict_probs",
           "predictive_entropy"]
