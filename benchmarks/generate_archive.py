"""Generate a synthetic pycomex results archive for benchmarks.

The archive mimics what pycomex 0.29 writes to disk: namespace folders holding
one folder per run, named ``[PREFIX__]DD_MM_YYYY__HH_MM_SS__p<pid>__<id>``
(or ``debug``), each with an ``experiment_meta.json`` byte-compatible with
``Experiment.save_metadata`` plus a few small asset files. Output depends only
on ``count``, ``seed`` and the local time zone (folder names use local time,
as pycomex does).

Usage::

    python benchmarks/generate_archive.py OUT_DIR --count 100000 [--seed 0]

Only the standard library is used, so it runs before the project is installed.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import random
import re
import string
import struct
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, NamedTuple

METADATA_FILE_NAME = "experiment_meta.json"
DATA_FILE_NAME = "experiment_data.json"
LOG_FILE_NAME = "experiment_out.log"
CODE_FILE_NAME = "experiment_code.py"
ANALYSIS_FILE_NAME = "analysis.py"

#: Start times are spread uniformly over the year starting 2025-06-01 00:00 UTC.
ARCHIVE_EPOCH = 1748736000.0
ARCHIVE_SPAN_SECONDS = 365 * 24 * 3600

STATUS_WEIGHTS = {"done": 80, "failed": 15, "running": 5}
ERROR_TYPE_WEIGHTS = {
    "ValueError": 34,
    "RuntimeError": 26,
    "OutOfMemoryError": 14,
    "KeyError": 12,
    "ZeroDivisionError": 6,
    "FileNotFoundError": 5,
    "AssertionError": 3,
}
PREFIX_WEIGHTS = {"ablation": 4, "baseline": 3, "rerun": 2, "final": 1}
PREFIX_PROBABILITY = 0.06
BASE_PATHS = ("/home/lab/results", "/home/lab/results", "/home/lab/results", "/scratch/lab/results")
DURATION_RANGE_SECONDS = (2.0, 6 * 3600.0)

WORKER_COUNT = 2
CHUNK_SIZE = 250
#: Below this many experiments a process pool costs more than it saves.
POOL_THRESHOLD = 2000

ALPHANUMERIC = string.ascii_lowercase + string.ascii_uppercase + string.digits
FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)

Sampler = Callable[[random.Random, "NamespaceSpec"], Any]


@dataclass(frozen=True)
class ParameterSpec:
    """One user parameter of an experiment module: how it is declared and sampled."""

    name: str
    type_name: str
    description: str
    sample: Sampler
    omit_probability: float = 0.0
    usable: bool = True


@dataclass(frozen=True)
class NamespaceSpec:
    """One experiment module and the namespace folder its runs are archived in."""

    namespace: str
    module_name: str
    description: str
    hooks: tuple[tuple[str, str], ...]
    parameters: tuple[ParameterSpec, ...]
    track: tuple[str, ...]
    models: tuple[str, ...]
    datasets: tuple[str, ...]
    weight: int
    debug_probability: float

    @property
    def short_description(self) -> str:
        return self.description.strip().split("\n")[0]


class ExperimentPlan(NamedTuple):
    """What the planning pass fixes for one run; the rest derives from ``seed``."""

    namespace_index: int
    folder_name: str
    start_time: float
    prefix: str
    is_debug: bool
    seed: int


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _learning_rate(rng: random.Random, _: NamespaceSpec) -> float:
    """Log-uniform within each decade band, half of the runs below 0.01 and half above."""
    exponent = rng.uniform(-4.0, -2.0) if rng.random() < 0.5 else rng.uniform(-2.0, -1.0)
    return float(f"{10**exponent:.3g}")


def _batch_size(rng: random.Random, _: NamespaceSpec) -> int:
    return rng.choice((16, 32, 64, 128))


def _model(rng: random.Random, spec: NamespaceSpec) -> str:
    return rng.choice(spec.models)


def _dataset(rng: random.Random, spec: NamespaceSpec) -> str:
    return rng.choice(spec.datasets)


def _epochs(rng: random.Random, _: NamespaceSpec) -> int:
    return int(_log_uniform(rng, 1, 300))


def _dropout(rng: random.Random, _: NamespaceSpec) -> float:
    return rng.choice((0.0, 0.1, 0.2, 0.25, 0.3, 0.5))


def _hidden_units(rng: random.Random, _: NamespaceSpec) -> list[int]:
    return list(rng.choice(((64,), (128, 64), (256, 128), (64, 32, 16), (512, 256, 128, 64), (1024,))))


def _optimizer(rng: random.Random, _: NamespaceSpec) -> dict[str, Any]:
    kind = rng.choices(("adam", "adamw", "sgd"), weights=(5, 3, 2))[0]
    if kind == "sgd":
        return {"name": "sgd", "momentum": {"value": rng.choice((0.0, 0.9, 0.99)), "nesterov": rng.random() < 0.5}}
    return {
        "name": kind,
        "betas": {"beta1": rng.choice((0.8, 0.9)), "beta2": rng.choice((0.99, 0.999))},
        "weight_decay": rng.choice((0.0, 1e-05, 0.0001, 0.01)),
    }


def _use_gpu(rng: random.Random, _: NamespaceSpec) -> bool:
    return rng.random() < 0.7


def _seed(rng: random.Random, _: NamespaceSpec) -> int:
    return rng.randrange(10_000)


def _scheduler(rng: random.Random, _: NamespaceSpec) -> str:
    index = rng.randrange(4)
    if index == 0:
        return f"CosineScheduler(warmup={rng.choice((0, 2, 5))}, t_max={rng.choice((50, 100, 200))})"
    if index == 1:
        return f"StepLR(step_size={rng.choice((10, 30))}, gamma=0.1)"
    if index == 2:
        return "ExponentialLR(gamma=0.95)"
    return f"<torch.optim.lr_scheduler.ReduceLROnPlateau object at 0x7f{rng.getrandbits(40):010x}>"


def _patience(rng: random.Random, _: NamespaceSpec) -> int | None:
    return None if rng.random() < 0.7 else rng.choice((5, 10, 20))


def _warmup_steps(rng: random.Random, _: NamespaceSpec) -> int:
    return rng.choice((0, 100, 500, 1000))


def _kernel_sizes(rng: random.Random, _: NamespaceSpec) -> list[int]:
    return list(rng.choice(((3, 3), (3, 3, 5), (5, 5, 3), (7, 3, 3, 3))))


def _image_size(rng: random.Random, _: NamespaceSpec) -> int:
    return rng.choice((32, 64, 128, 224))


def _ablation(rng: random.Random, _: NamespaceSpec) -> str:
    return rng.choice(("none", "batchnorm", "skip_connections", "augmentation", "pretraining"))


def _num_heads(rng: random.Random, _: NamespaceSpec) -> int:
    return rng.choice((4, 8, 12, 16))


def _max_sequence_length(rng: random.Random, _: NamespaceSpec) -> int:
    return rng.choice((128, 256, 512, 1024))


def _vocabulary_size(rng: random.Random, _: NamespaceSpec) -> int:
    return rng.choice((8000, 16000, 32000, 50257))


def _environment(rng: random.Random, _: NamespaceSpec) -> str:
    return rng.choice(("CartPole-v1", "LunarLander-v2", "HalfCheetah-v4", "Pong-v5"))


def _gamma(rng: random.Random, _: NamespaceSpec) -> float:
    return rng.choice((0.95, 0.98, 0.99, 0.995))


def _clip_range(rng: random.Random, _: NamespaceSpec) -> float:
    return round(rng.uniform(0.05, 0.4), 3)


def _num_environments(rng: random.Random, _: NamespaceSpec) -> int:
    return rng.choice((1, 4, 8, 16, 32))


def _tags(rng: random.Random, _: NamespaceSpec) -> list[str]:
    return rng.choice((["dev"], ["dev", "größe", "✓"], ["quick", "ünicode ✓"], []))


def _extra_metric(rng: random.Random, _: NamespaceSpec) -> float:
    return round(rng.uniform(-3.0, 3.0), 4)


LEARNING_RATE = ParameterSpec(
    "LEARNING_RATE", "float", "The learning rate of the optimizer. Should be a small positive float. ", _learning_rate
)
BATCH_SIZE = ParameterSpec("BATCH_SIZE", "int", "The number of samples in one training batch. ", _batch_size)
MODEL = ParameterSpec("MODEL", "str", "The string identifier of the model architecture. ", _model)
EPOCHS = ParameterSpec("EPOCHS", "int", "The number of epochs to train for. ", _epochs)
DROPOUT = ParameterSpec(
    "DROPOUT", "float", "Dropout rate applied after every hidden layer. ", _dropout, omit_probability=0.1
)
HIDDEN_UNITS = ParameterSpec(
    "HIDDEN_UNITS", "list", "A list with the number of hidden units for each layer of the network. ", _hidden_units
)
OPTIMIZER = ParameterSpec("OPTIMIZER", "dict", "A nested dictionary configuring the optimizer. ", _optimizer)
USE_GPU = ParameterSpec("USE_GPU", "bool", "Whether to use the GPU for training. ", _use_gpu, omit_probability=0.05)
SEED = ParameterSpec("SEED", "int", "Random seed for the emulated training process. ", _seed)
SCHEDULER = ParameterSpec(
    "SCHEDULER",
    "object",
    "The learning rate scheduler object. This parameter is not JSON encodable. ",
    _scheduler,
    usable=False,
)
DATASET = ParameterSpec("DATASET", "str", "Name of the dataset to use. ", _dataset)
PATIENCE = ParameterSpec(
    "PATIENCE", "UnkownType", "Optional early stopping patience; None disables early stopping. ", _patience
)
WARMUP_STEPS = ParameterSpec("WARMUP_STEPS", "int", "Number of warmup steps. ", _warmup_steps)
KERNEL_SIZES = ParameterSpec(
    "KERNEL_SIZES", "tuple", "A tuple of kernel sizes (stored as a JSON list). ", _kernel_sizes
)
IMAGE_SIZE = ParameterSpec("IMAGE_SIZE", "int", "Side length in pixels the input images are resized to. ", _image_size)
ABLATE = ParameterSpec("ABLATE", "str", "The model component which is removed in this ablation run. ", _ablation)
NUM_HEADS = ParameterSpec("NUM_HEADS", "int", "Number of attention heads per transformer layer. ", _num_heads)
MAX_SEQ_LEN = ParameterSpec("MAX_SEQ_LEN", "int", "Maximum token sequence length. ", _max_sequence_length)
VOCAB_SIZE = ParameterSpec("VOCAB_SIZE", "int", "Size of the tokenizer vocabulary. ", _vocabulary_size)
ENV_NAME = ParameterSpec("ENV_NAME", "str", "The gymnasium environment id. ", _environment)
GAMMA = ParameterSpec("GAMMA", "float", "Discount factor for future rewards. ", _gamma)
CLIP_RANGE = ParameterSpec("CLIP_RANGE", "float", "PPO clipping range of the policy ratio. ", _clip_range)
NUM_ENVS = ParameterSpec("NUM_ENVS", "int", "Number of parallel environments. ", _num_environments)
TAGS = ParameterSpec("TAGS", "list", 'Free-form tags with a unicode character: "größe", "ünicode ✓". ', _tags)
EXTRA_METRIC = ParameterSpec("EXTRA_METRIC", "float", "Some float parameter that can be negative. ", _extra_metric)

COMMON_PARAMETERS = (
    LEARNING_RATE,
    BATCH_SIZE,
    MODEL,
    EPOCHS,
    DROPOUT,
    HIDDEN_UNITS,
    OPTIMIZER,
    USE_GPU,
    SEED,
    SCHEDULER,
    DATASET,
)

LOAD_DATA_HOOK = (
    "load_data",
    "Loads the training data. Receives the experiment object and returns a tuple (xs, ys) of numpy arrays. ",
)
EVALUATE_HOOK = ("evaluate", "")
PLOT_HOOK = ("plot_results", "Creates the figures for the tracked metrics and saves them into the archive folder. ")

NAMESPACES: tuple[NamespaceSpec, ...] = (
    NamespaceSpec(
        namespace="neural_net",
        module_name="train_neural_net",
        description=(
            "\nTrains a small multi-layer perceptron on a synthetic regression task.\n\n"
            "The data is sampled from a standard normal distribution and the target is the sum of the\n"
            "input features. The experiment tracks the loss and accuracy over the epochs and optionally\n"
            "stores a figure of the loss curve, a text summary and the final weights as artifacts.\n\n"
            "This docstring is automatically used as the description of the experiment.\n"
        ),
        hooks=(EVALUATE_HOOK, LOAD_DATA_HOOK),
        parameters=COMMON_PARAMETERS,
        track=("loss", "accuracy"),
        models=("mlp", "resnet", "transformer"),
        datasets=("synthetic_regression", "boston_housing", "california_housing"),
        weight=22,
        debug_probability=0.5,
    ),
    NamespaceSpec(
        namespace="sweep/lr",
        module_name="lr_sweep",
        description=(
            "\nLearning rate sweep for the small convolutional model.\n\n"
            "Each run of this experiment trains the model with a different learning rate so that the\n"
            "results can later be compared in an analysis notebook.\n"
        ),
        hooks=(EVALUATE_HOOK, LOAD_DATA_HOOK),
        parameters=COMMON_PARAMETERS[:-1] + (PATIENCE, WARMUP_STEPS),
        track=("loss", "accuracy"),
        models=("cnn", "cnn_small"),
        datasets=("cifar10",),
        weight=18,
        debug_probability=0.4,
    ),
    NamespaceSpec(
        namespace="sweep/dropout",
        module_name="dropout_sweep",
        description=(
            "\nDropout sweep for the multi-layer perceptron.\n\n"
            "Sub experiment of the neural_net training that only varies the dropout rate and the width\n"
            "of the hidden layers. The interesting result is the gap between training and validation loss.\n"
        ),
        hooks=(EVALUATE_HOOK, LOAD_DATA_HOOK, PLOT_HOOK),
        parameters=COMMON_PARAMETERS + (PATIENCE,),
        track=("loss", "val_loss"),
        models=("mlp", "mlp_wide"),
        datasets=("synthetic_regression", "mnist"),
        weight=12,
        debug_probability=0.4,
    ),
    NamespaceSpec(
        namespace="vision/cnn",
        module_name="train_cnn",
        description=(
            "\nTrains a convolutional network for image classification.\n\n"
            "Images are resized to IMAGE_SIZE and lightly augmented (random crops and flips). The\n"
            "experiment tracks the training loss and the top-1 accuracy on the validation split.\n"
        ),
        hooks=(
            EVALUATE_HOOK,
            LOAD_DATA_HOOK,
            PLOT_HOOK,
            ("build_model", "Builds the network. Returns a torch module. "),
        ),
        parameters=COMMON_PARAMETERS + (KERNEL_SIZES, IMAGE_SIZE),
        track=("loss", "accuracy"),
        models=("cnn", "resnet18", "resnet50", "vit_tiny"),
        datasets=("cifar10", "cifar100", "imagenette"),
        weight=12,
        debug_probability=0.3,
    ),
    NamespaceSpec(
        namespace="vision/cnn/ablation",
        module_name="cnn_ablation",
        description=(
            "\nAblation study of the convolutional classifier.\n\n"
            "Extends train_cnn and removes one component of the model per run (see ABLATE) to measure\n"
            "how much each component contributes to the final accuracy.\n"
        ),
        hooks=(EVALUATE_HOOK, LOAD_DATA_HOOK, ("build_model", "Builds the network. Returns a torch module. ")),
        parameters=COMMON_PARAMETERS + (KERNEL_SIZES, ABLATE),
        track=("loss", "accuracy"),
        models=("resnet18", "resnet50"),
        datasets=("cifar10", "imagenette"),
        weight=10,
        debug_probability=0.3,
    ),
    NamespaceSpec(
        namespace="nlp/transformer",
        module_name="train_transformer",
        description=(
            "\nPre-trains a small decoder-only transformer language model.\n\n"
            "The model is trained with next token prediction on a text corpus. Only the loss is tracked;\n"
            "the perplexity is computed in the analysis.\n"
        ),
        hooks=(
            EVALUATE_HOOK,
            LOAD_DATA_HOOK,
            ("tokenize", "Tokenizes the raw corpus. Returns a list of token id arrays. "),
        ),
        parameters=COMMON_PARAMETERS + (NUM_HEADS, MAX_SEQ_LEN, VOCAB_SIZE),
        track=("loss",),
        models=("gpt_nano", "gpt_micro", "gpt_mini"),
        datasets=("tiny_shakespeare", "wikitext103", "openwebtext_10k"),
        weight=12,
        debug_probability=0.3,
    ),
    NamespaceSpec(
        namespace="rl/ppo",
        module_name="ppo_agent",
        description=(
            "\nTrains a PPO agent on a gymnasium environment.\n\n"
            "The experiment tracks the mean episode reward. Runs on the cluster write their archives to\n"
            "the scratch file system, which is why some base paths differ.\n"
        ),
        hooks=(EVALUATE_HOOK, ("make_env", "Creates the vectorized environment. ")),
        parameters=(
            LEARNING_RATE,
            BATCH_SIZE,
            MODEL,
            EPOCHS,
            HIDDEN_UNITS,
            OPTIMIZER,
            USE_GPU,
            SEED,
            SCHEDULER,
            ENV_NAME,
            GAMMA,
            CLIP_RANGE,
            NUM_ENVS,
        ),
        track=("episode_reward",),
        models=("mlp_policy", "cnn_policy"),
        datasets=(),
        weight=9,
        debug_probability=0.3,
    ),
    NamespaceSpec(
        namespace="debug_runs",
        module_name="debug_runs",
        description="\nQuick debugging runs used during development.\n",
        hooks=(EVALUATE_HOOK, LOAD_DATA_HOOK),
        parameters=(
            LEARNING_RATE,
            BATCH_SIZE,
            MODEL,
            EPOCHS,
            DROPOUT,
            HIDDEN_UNITS,
            OPTIMIZER,
            SEED,
            TAGS,
            EXTRA_METRIC,
        ),
        track=("loss", "accuracy"),
        models=("tiny",),
        datasets=(),
        weight=5,
        debug_probability=1.0,
    ),
)

#: pycomex's own parameters, in the order pycomex registers them, with its exact descriptions.
SPECIAL_PARAMETERS: tuple[tuple[str, str, str], ...] = (
    (
        "__DEBUG__",
        "bool",
        'Flag to enable debug mode. In debug mode the experiment archive folder will be called "debug" and will be '
        "overwritten when another experiment is started with the same name.",
    ),
    (
        "__TESTING__",
        "bool",
        "Flag to enable testing mode. In testing mode the experiment will be executed with minimal runtime and "
        "minimal resources simply to test if all the components work. Implementing testing mode is optional and "
        "will have to be done by each experiment individually.",
    ),
    (
        "__REPRODUCIBLE__",
        "bool",
        "Flag to enable reproducible mode. In reproducible mode, additional information will be stored in the "
        "experiment archive at the end of the experiment execution. This information will include a snapshot of "
        "the dependencies and the source code.",
    ),
    (
        "__PREFIX__",
        "str",
        "A string that will be prefixed to the experiment name. This can be used to differentiate between "
        "different runs of the same experiment. This will only be used as the prefix for the experiment name and "
        "not for the actual folder name.",
    ),
    (
        "__CACHING__",
        "bool",
        "Flag to enable or disable the experiment cache system. When False, cached results will not be loaded "
        "even if available, forcing recomputation. New results will still be saved to cache unless explicitly "
        "configured otherwise.",
    ),
    (
        "__OPTUNA__",
        "bool",
        "Flag to enable Optuna hyperparameter optimization mode. When True, the experiment will use parameter "
        "values suggested by Optuna's optimization algorithm instead of the default values. The experiment must "
        "define __optuna_parameters__ and __optuna_objective__ hooks. This flag is automatically set by "
        "'pycomex optuna run'.",
    ),
    (
        "__OPTUNA_REPETITIONS__",
        "int",
        "Number of times to repeat each Optuna trial for stochastic experiments. The objective values are "
        "averaged across repetitions to get a more robust estimate. Default: 1 (no repetition).",
    ),
    (
        "__INCLUDE__",
        "str | list[str]",
        "Mixin file(s) to include when running the experiment. Mixins provide reusable hook implementations. Can "
        "be a single file path (string), a list of file paths, or a comma-separated string of paths. Example: "
        "'mixin.py' or ['mixin1.py', 'mixin2.py'] or 'mixin1.py,mixin2.py'. When used with config files, command "
        "line mixins are added after config-specified mixins.",
    ),
    (
        "__NOTIFY__",
        "bool",
        "Determines whether a desktop notification should be sent when the experiment is done. This may or may "
        "not work depending on the operating system.",
    ),
)

#: Top-level metadata fields that vary per run (everything else is fixed per namespace).
RUN_FIELDS = ("__track__", "base_path", "duration", "end_time", "error_type", "has_error", "start_time", "status")

ANALYSIS_CODE = b'''#! /usr/bin/env python3
"""
This python module was automatically generated.

This module can be used to perform analyses on the results of an experiment which are saved in this archive
folder, without actually executing the experiment again. All the code that was decorated with the
"analysis" decorator was copied into this file and can subsequently be changed as well.
"""
import os
import json
import pathlib
from pprint import pprint
from typing import Dict, Any

# Useful imports for conducting analysis
import numpy as np
import matplotlib.pyplot as plt
from pycomex.functional.experiment import Experiment

# Importing the experiment

from experiment_code import *

PATH = pathlib.Path(__file__).parent.absolute()
CODE_PATH = os.path.join(PATH, 'experiment_code.py')
experiment = Experiment.load(CODE_PATH)
experiment.analyses = []


experiment.execute_analyses()'''


def metadata_dict(spec: NamespaceSpec, values: dict[str, Any]) -> dict[str, Any]:
    """The metadata pycomex would hold for one run; ``values`` has run fields and parameter values.

    User parameters absent from ``values`` are left out, as in an archive produced by an
    older version of the experiment module.
    """
    parameters: dict[str, dict[str, Any]] = {}
    for parameter in spec.parameters:
        if parameter.name in values:
            parameters[parameter.name] = {
                "description": parameter.description,
                "name": parameter.name,
                "type": parameter.type_name,
                "usable": parameter.usable,
                "value": values[parameter.name],
            }
    for name, type_name, description in SPECIAL_PARAMETERS:
        parameters[name] = {"description": description, "type": type_name, "usable": True, "value": values[name]}
    return {
        "__optuna__": False,
        "__track__": values["__track__"],
        "base_path": values["base_path"],
        "description": spec.description,
        "duration": values["duration"],
        "end_time": values["end_time"],
        "error_type": values["error_type"],
        "has_error": values["has_error"],
        "hooks": {name: {"description": description, "name": name} for name, description in spec.hooks},
        "name": spec.module_name,
        "namespace": spec.namespace,
        "parameters": parameters,
        "short_description": spec.short_description,
        "start_time": values["start_time"],
        "status": values["status"],
    }


def pycomex_json(metadata: dict[str, Any]) -> str:
    """Serialize exactly as ``Experiment.save_metadata`` does."""
    return json.dumps(metadata, indent=4, sort_keys=True)


#: Direct encoders for the scalar types (finite floats only), matching json.dumps output.
SCALAR_ENCODERS: dict[type, Callable[[Any], str]] = {
    type(None): lambda _: "null",
    bool: lambda value: "true" if value else "false",
    int: int.__repr__,
    float: float.__repr__,
    str: encode_basestring_ascii,
}


class MetadataTemplate:
    """Pre-serialized metadata of one namespace and parameter set, with slots for per-run values.

    ``json.dumps`` with ``indent`` runs the pure-Python encoder, far too slow for 100,000
    documents of 8 KB; filling slots gives the same bytes at a fraction of the cost.
    """

    _SLOT = re.compile(r'"@@slot:([^@"]+)@@"')

    def __init__(self, spec: NamespaceSpec, value_names: Iterable[str]) -> None:
        placeholders = {name: f"@@slot:{name}@@" for name in value_names}
        pieces = self._SLOT.split(pycomex_json(metadata_dict(spec, placeholders)))
        self.head: str = pieces[0]
        self.slots: list[tuple[str, str, str]] = []
        for index in range(1, len(pieces), 2):
            preceding = pieces[index - 1]
            line = preceding[preceding.rfind("\n") + 1 :]
            indent = line[: len(line) - len(line.lstrip(" "))]
            self.slots.append((pieces[index], indent, pieces[index + 1]))

    def render(self, values: dict[str, Any]) -> str:
        out = [self.head]
        for name, indent, literal in self.slots:
            value = values[name]
            encode_scalar = SCALAR_ENCODERS.get(type(value))
            if encode_scalar is not None:
                out.append(encode_scalar(value))
            elif value:
                out.append(json.dumps(value, indent=4, sort_keys=True).replace("\n", "\n" + indent))
            else:
                out.append(json.dumps(value))
            out.append(literal)
        return "".join(out)


_templates: dict[tuple[int, tuple[str, ...]], MetadataTemplate] = {}


def render_metadata(namespace_index: int, values: dict[str, Any]) -> str:
    """The experiment_meta.json text for one run, byte-identical to ``pycomex_json``."""
    key = (namespace_index, tuple(values))
    template = _templates.get(key)
    if template is None:
        spec = NAMESPACES[namespace_index]
        template = MetadataTemplate(spec, values)
        if template.render(values) != pycomex_json(metadata_dict(spec, values)):
            raise AssertionError(f"metadata template for {spec.namespace} does not match json.dumps")
        _templates[key] = template
    return template.render(values)


def _png_blob(seed: int, width: int, height: int, noisy_rows: int) -> bytes:
    """A valid grayscale PNG; the share of noisy rows sets its compressed size."""
    rng = random.Random(seed)
    rows = bytearray()
    for y in range(height):
        rows.append(0)
        if y < noisy_rows:
            rows.extend(rng.getrandbits(8) for _ in range(width))
        else:
            rows.extend(255 if x % (y + 2) else 40 for x in range(width))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"tEXt", b"Software\x00Matplotlib version3.8.2, https://matplotlib.org/")
        + chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + chunk(b"IEND", b"")
    )


def _npy_blob(seed: int, shape: tuple[int, int]) -> bytes:
    """A valid NumPy .npy (format 1.0) file of little-endian float32 values."""
    rng = random.Random(seed)
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".encode("latin-1")
    padding = 64 - (10 + len(header) + 1) % 64
    header += b" " * padding + b"\n"
    count = shape[0] * shape[1]
    data = struct.pack(f"<{count}f", *(rng.gauss(0.0, 0.1) for _ in range(count)))
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


@cache
def _binary_blobs() -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """Few pre-generated PNG and NPY payloads, shared by all runs to keep generation cheap."""
    pngs = tuple(_png_blob(index, 64, 40, noisy) for index, noisy in enumerate((4, 10, 18, 28)))
    npys = tuple(_npy_blob(index, shape) for index, shape in enumerate(((16, 8), (32, 8), (8, 4))))
    return pngs, npys


@cache
def experiment_code(namespace_index: int) -> bytes:
    """The experiment module copied into every run folder of a namespace (pycomex's save_code)."""
    spec = NAMESPACES[namespace_index]
    lines = ['"""' + spec.description + '"""', ""]
    lines += ["import os", "import json", "import random", "", "import numpy as np", ""]
    lines += [
        "from pycomex.functional.experiment import Experiment",
        "from pycomex.utils import file_namespace, folder_path",
        "",
    ]
    lines += [f'experiment_namespace = "{spec.namespace}"', "", "# == PARAMETERS ==", ""]
    defaults_rng = random.Random(namespace_index)
    for parameter in spec.parameters:
        default = parameter.sample(defaults_rng, spec)
        annotation = {"object": "object", "UnkownType": "int | None"}.get(parameter.type_name, parameter.type_name)
        lines.append(f"# :param {parameter.name}:")
        lines.append(f"#       {parameter.description.strip()}")
        literal = repr(tuple(default)) if parameter.type_name == "tuple" else repr(default)
        lines.append(f"{parameter.name}: {annotation} = {literal}")
    lines += ["", "__DEBUG__ = False", ""]
    lines += [
        "",
        "@Experiment(",
        "    base_path=folder_path(__file__),",
        "    namespace=experiment_namespace,",
        "    glob=globals(),",
        ")",
        "def experiment(e: Experiment):",
        '    e.log("starting experiment ...")',
        "    xs, ys = e.apply_hook('load_data')",
        "    for epoch in range(e.EPOCHS):",
        "        metrics = e.apply_hook('train_epoch', xs=xs, ys=ys, epoch=epoch)",
        "        loss = metrics['loss']",
    ]
    lines += [f"        e.track('{name}', metrics['{name}'])" for name in spec.track]
    lines += [
        "        e[f'epochs/{epoch}/loss'] = loss",
        "        e.log(f'epoch {epoch:03d} - loss: {loss:.5f}')",
        "",
        "    e.apply_hook('evaluate')",
        "",
    ]
    for name, description in spec.hooks:
        lines += [
            "",
            f"@experiment.hook('{name}', default=True)",
            f"def {name}(e: Experiment, **kwargs):",
            f'    """{description.strip()}"""' if description else "    pass",
        ]
        if description:
            lines.append("    return None")
    lines += ["", "", "experiment.run_if_main()", ""]
    return "\n".join(lines).encode("utf-8")


def _timestamp(moment: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(moment)) + f",{int(moment % 1 * 1000):03d}"


def _log_text(
    spec: NamespaceSpec,
    values: dict[str, Any],
    archive_path: str,
    curve: list[float],
    parameter_names: list[str],
) -> str:
    """A shortened experiment_out.log in pycomex's format: start banner, parameters, epochs, end."""
    start = values["start_time"]
    stamp = _timestamp(start) + " - "
    started_at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(start))
    lines = [
        "╭──── 🚀 EXPERIMENT STARTED ────╮",
        f"│  Namespace: {spec.namespace}",
        f"│  Source File: /home/lab/experiments/{spec.module_name}.py",
        f"│  Start Time: {started_at}",
        f"│  Archive Path: {archive_path}",
        f"│  Debug Mode: {values['__DEBUG__']}",
        f"│  Parameters: {len(parameter_names) + len(SPECIAL_PARAMETERS)} total",
        "╰──────────────────────────────╯",
        "",
        "starting experiment ...",
    ]
    types = {parameter.name: parameter.type_name for parameter in spec.parameters}
    for name in parameter_names:
        lines.append(f"○ {name} ({types[name]})")
        lines.append(f"    {values[name]}")
    lines.append("")
    body = [stamp + line for line in lines]
    step = (values["duration"] or 60.0) / max(len(curve), 1)
    for epoch, loss in enumerate(curve):
        body.append(f"{_timestamp(start + (epoch + 1) * step)} - epoch {epoch:03d} - loss: {loss:.5f}")
    if values["status"] == "running":
        return "\n".join(body) + "\n"
    end_stamp = _timestamp(values["end_time"]) + " - "
    if values["has_error"]:
        error_type = values["error_type"]
        body += [
            end_stamp + "=" * 80,
            end_stamp + f"EXPERIMENT ERROR: failed in epoch {len(curve)}",
            end_stamp + "Traceback (most recent call last):",
            end_stamp + f'  File "/home/lab/experiments/{spec.module_name}.py", line 138, in experiment',
            end_stamp + f"{error_type}: failed in epoch {len(curve)}",
        ]
    title = "❌ EXPERIMENT ENDED (WITH ERROR)" if values["has_error"] else "✅ EXPERIMENT ENDED"
    body += [
        end_stamp + f"╭──── {title} ────╮",
        end_stamp + f"│  Duration: {values['duration']:.1f} seconds",
        end_stamp + f"│  Error Occurred: {'Yes' if values['has_error'] else 'No'}",
        end_stamp + f"│  📁 Goto Archive: {archive_path}",
        end_stamp + "╰──────────────────────────────╯",
    ]
    return "\n".join(body) + "\n"


def _write_file(path: str, payload: bytes) -> None:
    descriptor = os.open(path, FILE_FLAGS, 0o666)
    try:
        os.write(descriptor, payload)
    finally:
        os.close(descriptor)


def _write_experiment(root: str, plan: ExperimentPlan) -> str:
    """Write one run folder and its files; returns the run's status."""
    rng = random.Random(plan.seed)
    spec = NAMESPACES[plan.namespace_index]
    status = rng.choices(tuple(STATUS_WEIGHTS), weights=tuple(STATUS_WEIGHTS.values()))[0]

    values: dict[str, Any] = {}
    for parameter in spec.parameters:
        if parameter.omit_probability and rng.random() < parameter.omit_probability:
            continue
        values[parameter.name] = parameter.sample(rng, spec)
    parameter_names = list(values)
    values.update(
        __DEBUG__=plan.is_debug,
        __TESTING__=rng.random() < 0.02,
        __REPRODUCIBLE__=rng.random() < 0.05,
        __PREFIX__=plan.prefix,
        __CACHING__=rng.random() < 0.97,
        __OPTUNA__=False,
        __OPTUNA_REPETITIONS__=1,
        __INCLUDE__="mixins/logging_mixin.py" if rng.random() < 0.03 else None,
        __NOTIFY__=rng.random() < 0.1,
    )

    start_time = plan.start_time
    epochs = values.get("EPOCHS", 10)
    if status == "running":
        end_time, duration = None, 0
        epochs_run = rng.randint(0, min(epochs, 3))
    else:
        seconds = _log_uniform(rng, *DURATION_RANGE_SECONDS)
        if status == "failed":
            seconds *= rng.uniform(0.02, 1.0)
        end_time = start_time + seconds
        duration = end_time - start_time
        epochs_run = min(epochs, 12) if status == "done" else rng.randint(0, min(epochs, 12))
    error_type = (
        rng.choices(tuple(ERROR_TYPE_WEIGHTS), weights=tuple(ERROR_TYPE_WEIGHTS.values()))[0]
        if status == "failed"
        else None
    )
    values.update(
        __track__=[] if status == "running" else list(spec.track),
        base_path=rng.choice(BASE_PATHS),
        duration=duration,
        end_time=end_time,
        error_type=error_type,
        has_error=status == "failed",
        start_time=start_time,
        status=status,
    )

    relative = os.path.join(*spec.namespace.split("/"), plan.folder_name)
    folder = os.path.join(root, relative)
    try:
        os.mkdir(folder)
    except FileExistsError:
        pass

    decay = rng.uniform(0.5, 0.95)
    curve = [rng.uniform(0.8, 1.2) * decay**epoch for epoch in range(epochs_run)]
    archive_path = values["base_path"] + "/" + spec.namespace + "/" + plan.folder_name
    _write_file(os.path.join(folder, METADATA_FILE_NAME), render_metadata(plan.namespace_index, values).encode("ascii"))
    _write_file(os.path.join(folder, CODE_FILE_NAME), experiment_code(plan.namespace_index))
    _write_file(os.path.join(folder, ANALYSIS_FILE_NAME), ANALYSIS_CODE)
    log_text = _log_text(spec, values, archive_path, curve, parameter_names)
    _write_file(os.path.join(folder, LOG_FILE_NAME), log_text.encode("utf-8"))
    if status == "running":
        return status

    data: dict[str, Any] = {"data": {"num_samples": rng.choice((64, 128, 1000, 50000))}}
    for name in spec.track:
        data[name] = curve if name in ("loss", "val_loss") else [round(1.0 - loss / 2, 6) for loss in curve]
    data["epochs"] = {str(epoch): {"loss": loss} for epoch, loss in enumerate(curve)}
    if status == "done":
        data["metrics"] = {"final_loss": curve[-1] if curve else None, "evaluated": True, "model": values["MODEL"]}
    _write_file(os.path.join(folder, DATA_FILE_NAME), json.dumps(data).encode("utf-8"))

    pngs, npys = _binary_blobs()
    if rng.random() < 0.35:
        for name in spec.track:
            _write_file(os.path.join(folder, f"{name}.png"), rng.choice(pngs))
    if status == "done" and rng.random() < 0.12:
        _write_file(os.path.join(folder, "weights.npy"), rng.choice(npys))
    if status == "done" and rng.random() < 0.08:
        summary = {"final_loss": curve[-1] if curve else None, "epochs": epochs, "model": values["MODEL"]}
        _write_file(os.path.join(folder, "summary.json"), json.dumps(summary).encode("utf-8"))
    return status


def _write_chunk(task: tuple[str, list[ExperimentPlan]]) -> Counter[str]:
    root, plans = task
    return Counter(_write_experiment(root, plan) for plan in plans)


def plan_experiments(count: int, seed: int) -> list[ExperimentPlan]:
    """Draw namespace, start time and a unique folder name for every run, in one seeded pass.

    Names are fixed here rather than in the workers so that uniqueness can be checked and
    the output does not depend on how the work is split.
    """
    rng = random.Random(seed)
    weights = [spec.weight for spec in NAMESPACES]
    has_debug_folder = [rng.random() < spec.debug_probability for spec in NAMESPACES]
    prefixes, prefix_weights = tuple(PREFIX_WEIGHTS), tuple(PREFIX_WEIGHTS.values())
    used_names: list[set[str]] = [set() for _ in NAMESPACES]
    plans: list[ExperimentPlan] = []
    for namespace_index in rng.choices(range(len(NAMESPACES)), weights=weights, k=count):
        start_time = ARCHIVE_EPOCH + rng.random() * ARCHIVE_SPAN_SECONDS
        prefix = rng.choices(prefixes, weights=prefix_weights)[0] if rng.random() < PREFIX_PROBABILITY else ""
        pid = rng.randint(1000, 400_000)
        stamp = time.strftime("%d_%m_%Y__%H_%M_%S", time.localtime(start_time))
        is_debug = has_debug_folder[namespace_index]
        if is_debug:
            has_debug_folder[namespace_index] = False
            folder_name, prefix = "debug", ""
        else:
            while True:
                folder_name = f"{stamp}__p{pid}__{''.join(rng.choices(ALPHANUMERIC, k=4))}"
                if prefix:
                    folder_name = f"{prefix}__{folder_name}"
                if folder_name not in used_names[namespace_index]:
                    break
        used_names[namespace_index].add(folder_name)
        plans.append(ExperimentPlan(namespace_index, folder_name, start_time, prefix, is_debug, rng.getrandbits(64)))
    return plans


def _generate(root: Path, count: int, seed: int, progress: bool) -> Counter[str]:
    plans = plan_experiments(count, seed)
    root.mkdir(parents=True, exist_ok=True)
    for spec in NAMESPACES:
        root.joinpath(*spec.namespace.split("/")).mkdir(parents=True, exist_ok=True)
    tasks = [(str(root), plans[start : start + CHUNK_SIZE]) for start in range(0, count, CHUNK_SIZE)]
    statuses: Counter[str] = Counter()
    written = 0

    def report(chunk_statuses: Counter[str]) -> None:
        nonlocal written
        statuses.update(chunk_statuses)
        written += sum(chunk_statuses.values())
        if progress:
            print(f"\r{written}/{count} experiments written", end="", file=sys.stderr, flush=True)

    if count >= POOL_THRESHOLD and WORKER_COUNT > 1:
        with multiprocessing.Pool(WORKER_COUNT) as pool:
            for chunk_statuses in pool.imap_unordered(_write_chunk, tasks):
                report(chunk_statuses)
    else:
        for task in tasks:
            report(_write_chunk(task))
    if progress and count:
        print(file=sys.stderr)
    return statuses


def generate_archive(root: Path, count: int, seed: int = 0, *, progress: bool = False) -> None:
    """Write ``count`` synthetic pycomex runs below ``root`` (created if missing).

    Existing files with the same names are overwritten; nothing else in ``root`` is touched.
    """
    _generate(Path(root), count, seed, progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate a synthetic pycomex results archive for benchmarks.")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="archive root to create")
    parser.add_argument("--count", type=int, required=True, help="number of experiments to generate")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into OUT_DIR even if it is not empty (same-named files are overwritten, nothing is deleted)",
    )
    parser.add_argument("--progress", action="store_true", help="show a progress counter on stderr")
    args = parser.parse_args(argv)

    if args.count < 0:
        parser.error("--count must not be negative")
    out_dir: Path = args.out_dir
    if out_dir.exists() and not out_dir.is_dir():
        print(f"error: {out_dir} exists and is not a directory", file=sys.stderr)
        return 2
    if out_dir.is_dir() and any(out_dir.iterdir()) and not args.force:
        print(f"error: {out_dir} is not empty (use --force to write into it anyway)", file=sys.stderr)
        return 2

    started = time.perf_counter()
    statuses = _generate(out_dir, args.count, args.seed, args.progress)
    elapsed = time.perf_counter() - started
    breakdown = ", ".join(f"{statuses[status]} {status}" for status in STATUS_WEIGHTS)
    print(
        f"generated {args.count} experiments ({breakdown}) in {out_dir} with seed {args.seed} in {elapsed:.1f}s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
