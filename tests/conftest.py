"""Every test leaves the process's global settings as the session found them.

torch's thread count, grad mode, default dtype, quantized engine and the like are process-wide: a test
that changes one and does not put it back changes what every later test computes, so results depend on
the test order (a forgotten torch.set_num_threads(1) once hid a thread-count dependence). The guard
compares these settings with the session's start before each test (a module fixture's setup or an earlier
teardown may have changed them) and after it, fails the test that finds them changed, and restores them
so that one leak is reported once. A test that needs another setting changes it and puts it back
(try/finally, a fixture, or monkeypatch, which restores before this guard looks).

Not guarded: torch's global random generator. Tests that sample from it seed it first (build_model(seed=...),
torch.manual_seed), so its state between tests matters to none.
"""

from __future__ import annotations

import os

import pytest
import torch

ENVIRONMENT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "FBGEMM_ENABLE_INSTRUCTIONS", "RANK", "LOCAL_RANK",
               "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES",
               "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
"""Environment variables that change what torch, transformers or duilian compute (the trainer reads RANK,
the int8 kernels FBGEMM_ENABLE_INSTRUCTIONS). Not the whole environment: importing transformers' models
sets TORCHINDUCTOR_CACHE_DIR, and pytest sets PYTEST_CURRENT_TEST, neither a test's doing."""


def _environ() -> dict:
    return {k: os.environ.get(k) for k in ENVIRONMENT}


def _set_environ(values: dict) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _set_quantized_engine(engine: str) -> None:
    torch.backends.quantized.engine = engine


SETTINGS = {
    "torch.get_num_threads()": (torch.get_num_threads, torch.set_num_threads),
    "torch.is_grad_enabled()": (torch.is_grad_enabled, torch.set_grad_enabled),
    "torch.is_inference_mode_enabled()": (torch.is_inference_mode_enabled, None),
    "torch.get_default_dtype()": (torch.get_default_dtype, torch.set_default_dtype),
    "torch.backends.quantized.engine": (lambda: torch.backends.quantized.engine, _set_quantized_engine),
    "torch.are_deterministic_algorithms_enabled()": (torch.are_deterministic_algorithms_enabled,
                                                     torch.use_deterministic_algorithms),
    "torch.get_float32_matmul_precision()": (torch.get_float32_matmul_precision,
                                             torch.set_float32_matmul_precision),
    "torch.is_anomaly_enabled()": (torch.is_anomaly_enabled, torch.set_anomaly_enabled),
    "os.getcwd()": (os.getcwd, os.chdir),
    "os.environ": (_environ, _set_environ),
}
"""name -> (read, restore); restore is None where a setting cannot be put back from outside (inference
mode is a context, never left on by a finished `with`)."""


def _read() -> dict:
    return {name: read() for name, (read, _) in SETTINGS.items()}


SESSION_START = _read()


def _changes(when: str) -> list[str]:
    """What differs from SESSION_START, described; each difference is put back."""
    now = _read()
    changed = []
    for name, before in SESSION_START.items():
        if now[name] == before:
            continue
        if name == "os.environ":
            keys = [k for k in ENVIRONMENT if before[k] != now[name][k]]
            changed.append(f"os.environ[{', '.join(keys)}] changed {when}")
        else:
            changed.append(f"{name} is {now[name]!r} {when}, not {before!r}")
        restore = SETTINGS[name][1]
        if restore is not None:
            restore(before)
    return changed


@pytest.fixture(autouse=True)
def global_state_is_left_alone():
    changed = _changes("before this test (a fixture's setup or an earlier teardown changed it)")
    if changed:
        pytest.fail("global state changed: " + "; ".join(changed), pytrace=False)
    yield
    changed = _changes("after this test")
    if changed:
        pytest.fail("global state changed: " + "; ".join(changed), pytrace=False)


def pytest_collection_modifyitems(config, items):
    """Tests marked `int8` need torch's x86/fbgemm/onednn quantized engine: skipped, with the reason, where torch
    has none (one check here instead of a helper in each test file)."""
    from duilian import gpt

    try:
        gpt.check_int8_engine()
        return
    except ValueError:
        pass
    skip = pytest.mark.skip(reason="torch has no x86/fbgemm/onednn quantized engine")
    for item in items:
        if "int8" in item.keywords:
            item.add_marker(skip)
