"""What input shapes a model accepts, checked by `build_model` before anything trains.

Each model class has a classmethod `input_problem(input_shape, **model_kwargs)` that returns
None when it can take inputs of that shape (without the batch dim) or an `InputProblem`
saying what it needs and how to get there; `build_model` turns it into one message naming
both the model and the data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InputProblem:
    needs: str      # e.g. "inputs of shape (1, 14, 14)"
    hint: str = ""  # e.g. "set data.resize=[14,14]"


class IncompatibleInputError(ValueError):
    """The data's input shape does not fit the model."""


def incompatible_message(model: str, data: str, input_shape: tuple[int, ...], problem: InputProblem) -> str:
    msg = f"model={model} needs {problem.needs}; data={data} gives {tuple(input_shape)}"
    return msg + (f" — {problem.hint}" if problem.hint else "")
