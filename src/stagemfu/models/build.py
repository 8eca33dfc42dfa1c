"""Turn a :class:`~stagemfu.models.ModelSpec` into a runnable transformers model and its inputs.

The built-in runners of ``stagemfu run`` and the torch and fvcore FLOP counters all start here, so
the model that is timed on the GPU and the model whose FLOPs are counted are the same object. Which
class builds it, where its stages sit and which image inputs it takes are its family's
(:meth:`~stagemfu.models.family.Family.transformers_model`, ``stage_paths``,
``language_model_paths``, :meth:`~stagemfu.models.family.Family.image_inputs`): a decoder LM is
transformers' causal-LM class for its ``model_type``, DeepSeek-OCR-2 transformers' own
``DeepseekOcr2ForConditionalGeneration``, DeepSeek-OCR :mod:`stagemfu.models.deepseek_ocr_v1`.

torch and transformers are the ``[model]`` extra; they are imported when a function here is called.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from stagemfu.errors import ModelConfigError
from stagemfu.models.shapes import BUILD_DTYPES

if TYPE_CHECKING:
    import torch

    from stagemfu.models.presets import ModelSpec
    from stagemfu.models.shapes import Shapes

TORCH_DTYPES = dict(zip(BUILD_DTYPES, ("bfloat16", "float16", "float32")))

SEED = 0  # example inputs are random but the same on every call


def require_model_extra() -> None:
    """Raise MissingDependencyError unless torch and transformers are installed at the declared versions."""
    from stagemfu.deps import require

    require("torch", "transformers", needed_for="building or running a model")


def torch_dtype(dtype: str) -> torch.dtype:
    """The torch dtype for a stagemfu dtype name (bf16, fp16, fp32)."""
    import torch

    if dtype not in TORCH_DTYPES:
        raise ModelConfigError(f"--dtype {dtype}: unknown; use one of {', '.join(TORCH_DTYPES)}")
    return getattr(torch, TORCH_DTYPES[dtype])


def model_class_and_config(spec: ModelSpec) -> tuple[type, Any]:
    """The transformers model class and config object that ``spec`` describes.

    Raises
    ------
    ModelConfigError
        When transformers rejects the config (unknown model_type, inconsistent sizes); the message
        names ``spec.source``.
    """
    require_model_extra()
    import transformers
    from huggingface_hub.errors import StrictDataclassError

    try:
        return spec.family.transformers_model(spec.config)
    except ModelConfigError as err:
        raise ModelConfigError(f"{spec.source}: {err}") from err
    except (KeyError, TypeError, ValueError, StrictDataclassError) as err:
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ModelConfigError(
            f"{spec.source}: transformers {transformers.__version__} cannot build this config ({reason[:200]}); "
            "fix the config or pass a matching --config FILE"
        ) from err


def build_model(
    spec: ModelSpec,
    *,
    device: str = "meta",
    dtype: str = "bf16",
    attn: str = "sdpa",
    experts: str | None = None,
    weights: Path | None = None,
) -> torch.nn.Module:
    """The transformers model of ``spec``, in eval mode, ready for ``model(**kw)`` and ``generate``.

    Parameters
    ----------
    spec
        The model (preset or local config).
    device
        Where the parameters live. ``meta`` (the default) allocates nothing: enough for shapes and
        FLOP counting. Any other device gets random weights unless ``weights`` is given.
    dtype
        ``bf16``, ``fp16`` or ``fp32``.
    attn
        transformers' attention implementation (``sdpa``, ``eager``, ...), applied to every sub-model.
    experts
        transformers' MoE experts implementation (``grouped_mm``, ``batched_mm``, ``eager``); None
        keeps transformers' default (``grouped_mm`` where it can run).
    weights
        A local checkpoint directory saved from this same model class (``save_pretrained``); its
        config must match ``spec``. Nothing is downloaded.

    Returns
    -------
    torch.nn.Module
        The model; ``stage_modules`` names its stage sub-modules.

    Raises
    ------
    ModelConfigError
        The config cannot be built, or the checkpoint lacks weights the model needs.
    """
    import torch

    model_class, config = model_class_and_config(spec)
    options: dict[str, Any] = {"dtype": torch_dtype(dtype), "attn_implementation": attn}
    if experts is not None:
        options["experts_implementation"] = experts
    if weights is None:
        with torch.device(device):
            model = model_class._from_config(config, **options)
        return model.eval()
    model, info = model_class.from_pretrained(weights, config=config, output_loading_info=True, **options)
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise ModelConfigError(
            f"{weights}: the checkpoint lacks {len(missing)} weights of {model_class.__name__} (first: {missing[0]}); "
            "give a checkpoint saved from this model class"
        )
    return model.to(device).eval()


def stage_modules(spec: ModelSpec, model: torch.nn.Module) -> dict[str, str]:
    """Stage name -> dotted attribute path (from ``model``) of what runs exactly that stage.

    Sub-stages (``sam``, ``clip`` / ``encoder``, ``projector``) are modules: wrap their ``forward``
    (or register hooks); they run once for the global views and once more for the local crops.
    ``vision`` is the method that runs all of them, global view and crops, and lays out the image
    embeddings. ``prefill`` and ``decode`` are calls of the whole model, not sub-modules, so they are
    not listed. A decoder LM has no vision stages: the result is empty.

    Raises
    ------
    ModelConfigError
        When a path does not resolve on ``model`` (a model built from another spec).
    """
    paths = spec.family.stage_paths
    for stage, path in paths.items():
        try:
            resolve(model, path)
        except AttributeError as err:
            raise ModelConfigError(
                f"{spec.name}: the model has no {path!r} for stage {stage!r}; build it with build_model(spec)"
            ) from err
    return dict(paths)


def resolve(model: torch.nn.Module, path: str) -> Any:
    """The attribute at a dotted path below ``model`` (a sub-module or a bound method)."""
    target: Any = model
    for part in path.split("."):
        target = getattr(target, part)
    return target


def language_model(spec: ModelSpec, model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder stack, lm_head) of ``model``: what prefill and each decode step run, images aside."""
    backbone, head = spec.family.language_model_paths
    return resolve(model, backbone), resolve(model, head)


def example_inputs(spec: ModelSpec, shapes: Shapes, *, device: str | torch.device) -> dict[str, Any]:
    """Keyword arguments for ``model(**kw)`` and ``model.generate(**kw)`` that match ``shapes``.

    The prompt of every sample is laid out as the model's processor does it: the BOS token, the
    image placeholders (exactly ``shapes.image_tokens``, one per image embedding the model makes),
    then the rest of the text tokens (``text_tokens`` counts the BOS). An image family adds its
    pixel inputs (:meth:`~stagemfu.models.family.Family.image_inputs`): random, standard-normal like
    the processor's normalised images, in the run's dtype. On the meta device nothing is allocated.

    Returns
    -------
    dict
        ``input_ids`` and ``attention_mask`` (batch, prompt_tokens), plus the family's image inputs.
    """
    require_model_extra()
    import torch

    inputs = shapes.inputs
    batch, dtype = inputs.batch, torch_dtype(inputs.dtype)
    _, config = model_class_and_config(spec)
    text_config = getattr(config, "text_config", config)
    generator = torch.Generator().manual_seed(SEED)
    text = torch.randint(0, text_config.vocab_size, (batch, inputs.text_tokens), generator=generator)
    image_token_id = getattr(config, "image_token_id", None)
    if image_token_id is not None:
        text = torch.where(text == image_token_id, (image_token_id + 1) % text_config.vocab_size, text)
    bos = text_config.bos_token_id
    if bos is not None:
        text[:, 0] = bos
    images = torch.full((batch, shapes.image_tokens), image_token_id or 0, dtype=text.dtype)
    input_ids = torch.cat([text[:, :1], images, text[:, 1:]], dim=1)
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    kwargs = {key: value.to(device) for key, value in kwargs.items()}

    def pixels(count: int, side: int) -> torch.Tensor:
        return _pixels(generator, (count, 3, side, side), dtype, device).to(device)

    return kwargs | spec.family.image_inputs(shapes, pixels)


def _pixels(generator: Any, size: tuple[int, ...], dtype: torch.dtype, device: str | torch.device) -> torch.Tensor:
    import torch

    if torch.device(device).type == "meta":
        return torch.empty(size, dtype=dtype, device="meta")
    return torch.randn(size, generator=generator).to(dtype)
