"""The engine imports TensorRT-LLM's classes from paths every release read exports.

TensorRT-LLM cannot be installed here (see the README), so each test lays out a package tree
shaped as one release's source and imports through `availability.import_trtllm`:

- 1.x (`tensorrt_llm/disaggregated_params.py`, re-exported by `tensorrt_llm/llmapi/__init__.py`);
- the newest source, where the class moved to `tensorrt_llm/executor/params/disaggregation.py`
  and `tensorrt_llm.disaggregated_params` is gone, `llmapi` still re-exporting it.

The module bodies are one-line stand-ins; what is tested is where each name is looked up.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from dynamo_trtllm.availability import TrtllmUnavailableError, import_trtllm

COMMON = {
    "tensorrt_llm/__init__.py": "from .llmapi import LLM, SamplingParams\n",
    "tensorrt_llm/sampling_params.py": "class SamplingParams: pass\n",
    "tensorrt_llm/executor/__init__.py": "",
    "tensorrt_llm/executor/result.py": "class Logprob: pass\n",
    "tensorrt_llm/llmapi/llm.py": "class LLM: pass\n",
}
RELEASE_1X = {
    **COMMON,
    "tensorrt_llm/disaggregated_params.py": "class DisaggregatedParams: pass\n",
    "tensorrt_llm/llmapi/__init__.py": "from ..disaggregated_params import DisaggregatedParams\n"
                                       "from ..sampling_params import SamplingParams\nfrom .llm import LLM\n",
}
NEWEST = {
    **COMMON,
    "tensorrt_llm/executor/params/__init__.py": "",
    "tensorrt_llm/executor/params/disaggregation.py": "class DisaggregatedParams: pass\n",
    "tensorrt_llm/llmapi/__init__.py": "from ..executor.params.disaggregation import DisaggregatedParams\n"
                                       "from ..sampling_params import SamplingParams\nfrom .llm import LLM\n",
}


@pytest.fixture
def trtllm_tree(tmp_path: Path, monkeypatch):
    def lay_out(files: dict[str, str]) -> None:
        for name, text in files.items():
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.invalidate_caches()

    yield lay_out
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]


@pytest.mark.parametrize("files", [RELEASE_1X, NEWEST], ids=["1.x", "newest"])
def test_the_classes_come_from_paths_every_release_exports(trtllm_tree, files):
    trtllm_tree(files)
    api = import_trtllm()
    assert api.disaggregated_params.__module__ in ("tensorrt_llm.disaggregated_params",
                                                   "tensorrt_llm.executor.params.disaggregation")
    assert (api.llm.__name__, api.sampling_params.__name__, api.logprob.__name__) == ("LLM", "SamplingParams", "Logprob")


def test_a_tensorrt_llm_without_those_names_is_reported_as_unusable(trtllm_tree):
    trtllm_tree({**COMMON, "tensorrt_llm/llmapi/__init__.py": "from .llm import LLM\n"
                                                               "from ..sampling_params import SamplingParams\n"})
    with pytest.raises(TrtllmUnavailableError, match="could not import TensorRT-LLM"):
        import_trtllm()
