"""Every document stagemfu writes or reads: its ``schema`` name, and the files a run leaves beside a trace.

One module owns these names so that the writer of a document and its reader can never spell it
differently. A name is versioned (``/1``): a field may be added to a document, never renamed or
removed; a change that breaks a reader gets a new version. Imports nothing, so every layer
(``collect`` inside the profiled child, the analyzer, the report, the CLI) can use it.

Files beside a trace (``stagemfu collect`` / ``stagemfu run`` write them in the output directory;
``stagemfu report`` reads them as ``NAME`` or ``<trace stem>.NAME``):

``run.json`` (:data:`RUN`)
    What was run and on what: command, exit status, times, GPUs, versions. ``stagemfu run`` also
    copies :data:`RUN_KEYS_FROM_SHAPES` of ``shapes.json`` into it (and the whole of it under
    ``runner``), so ``run.json`` alone lets the report count the same FLOPs again.
``shapes.json`` (:data:`SHAPES`)
    The built-in runner's model, config overlay, inputs, resolved shapes and devices;
    the report reads :data:`SHAPES_KEYS_READ`.
``flops.json`` (:data:`FLOPS`)
    FLOPs per stage of one call, counted by ``stagemfu.count_flops`` while the program ran.
"""

from __future__ import annotations

# Documents, by the command or library call that writes them.
POSTPROCESS = "stagemfu.postprocess/1"  # stagemfu postprocess TRACE --format json
POSTPROCESS_MANY = "stagemfu.postprocess.many/1"  # stagemfu postprocess TRACE TRACE... --format json
ANALYZE = "stagemfu.analyze/1"  # stagemfu analyze MODEL --format json
ANALYZE_SWEEP = "stagemfu.analyze.sweep/1"  # stagemfu analyze MODEL --sweep NAME=V,... --format json
REPORT = "stagemfu.report/1"  # stagemfu report --format json
COMPARE = "stagemfu.compare/1"  # stagemfu compare A B --format json
CALIBRATION = "stagemfu.calibration/1"  # stagemfu calibrate --format json
CALIBRATION_WORKLOAD = "stagemfu.calibration_workload/1"  # the GEMM list calibrate's workload writes
CACHE = "stagemfu.cache/1"  # stagemfu cache info --format json
RUN = "stagemfu.run/1"  # run.json
SHAPES = "stagemfu.shapes/1"  # shapes.json
FLOPS = "stagemfu.flops/1"  # flops.json

# Files beside a trace.
RUN_FILE = "run.json"
SHAPES_FILE = "shapes.json"
FLOPS_FILE = "flops.json"
# The output directory, as `stagemfu collect`/`run` tell the profiled program (stagemfu.count_flops writes there).
OUT_DIR_ENV = "STAGEMFU_OUT_DIR"

# shapes.json keys `stagemfu run` copies to the top of run.json: what the report needs to count the FLOPs again.
RUN_KEYS_FROM_SHAPES = ("model", "config", "inputs")
# shapes.json keys the report reads (over run.json's): the model and inputs, and how the run was made.
SHAPES_KEYS_READ = (*RUN_KEYS_FROM_SHAPES, "repeat", "attn", "weights", "device_name")
