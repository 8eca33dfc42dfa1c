"""Benchmark workload: a Llama-3.2-1B-shape ``generate`` with every aten op recorded as an NVTX range.

    nsys profile --trace=cuda,nvtx ... python3 llama_generate_shapes.py CONFIG.json [PROMPT NEW]

transformers' LlamaForCausalLM from the published config, random weights, bf16, one warm-up and one
measured ``generate`` of NEW tokens from a PROMPT-token prompt (512 and 64 by default), the measured
one under ``torch.autograd.profiler.emit_nvtx(record_shapes=True)``: one NVTX range per aten op,
almost every name distinct (``aten::mm, seq = …, op_id = …, sizes = [[…]]``). Stage ranges
(``stagemfu`` domain): ``warmup``, ``measured``, ``prefill`` and one ``decode`` per token after the
first. It is the shape of trace that makes per-name work expensive in postprocess.
"""

from __future__ import annotations

import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from stagemfu import generation_stages, stage


def main() -> None:
    config = LlamaConfig.from_json_file(sys.argv[1])
    prompt, new = (int(a) for a in sys.argv[2:4]) if len(sys.argv) > 3 else (512, 64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()
    tokens = torch.randint(0, config.vocab_size, (1, prompt), device="cuda")
    kwargs = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False}
    with torch.inference_mode():
        with stage("warmup"):
            model.generate(tokens, **kwargs)
            torch.cuda.synchronize()
        with stage("measured"), torch.autograd.profiler.emit_nvtx(record_shapes=True):
            with generation_stages(model):
                model.generate(tokens, **kwargs)
            torch.cuda.synchronize()


if __name__ == "__main__":
    main()
