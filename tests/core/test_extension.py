"""The build-info check: a torch mismatch gives a readable error, not an undefined-symbol crash."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

from cina_ext import ops
from cina_ext._core import extension as _extension


def test_check_build_info_message():
    assert _extension.check_build_info(torch.__version__, torch.__version__) is None
    msg = _extension.check_build_info("1.0.0+cpu", torch.__version__)
    assert "built against torch 1.0.0+cpu" in msg and torch.__version__ in msg


def test_mismatched_build_is_refused_before_loading():
    code = textwrap.dedent(
        """
        import sys, types, torch
        fake = types.ModuleType("cina_ext._build_info")
        fake.TORCH_VERSION = "1.0.0"
        fake.WITH_CUDA = False
        sys.modules["cina_ext._build_info"] = fake
        import cina_ext
        from cina_ext import ops
        assert not ops.has_extension()
        assert "built against torch 1.0.0" in ops.extension_error(), ops.extension_error()
        assert "cina_ext._C" not in sys.modules  # never loaded
        K = torch.zeros(1, 2, 1)
        try:
            ops.attention_hinge(K, K[..., 0], K[..., 0] + 1, torch.zeros(1), 1.0, backend="fused")
        except RuntimeError as e:
            assert "built against torch" in str(e)
            print("REFUSED")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "REFUSED" in res.stdout


def test_extension_loaded_in_this_environment():
    # The test environment is built by `make test`; a silent fallback to the reference would hide
    # a broken build, so this must hold here.
    assert ops.has_extension(), ops.extension_error()
