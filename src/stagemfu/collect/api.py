"""NVTX stage ranges for the user's own code, all in one NVTX domain, ``stagemfu``.

Three ways to mark stages::

    with stagemfu.stage("prefill"): ...             # a block
    @stagemfu.stage("decode")                       # every call of a function
    def step(...): ...
    handle = stagemfu.instrument(model, {"sam": "model.vision_tower.sam_encoder"})  # forwards, methods
    with stagemfu.generation_stages(model):         # one HF generate call: prefill + one decode per token
        model.generate(...)

Without a profiler attached, nvtx hands out a do-nothing domain: a ``stage`` range then costs
well under a microsecond, and ``instrument`` and ``generation_stages`` install no hooks at all
(torch's hook machinery alone costs microseconds per forward); ``bench/bench_nvtx_api.py``
measures it. Range names are registered strings, made once per name. The ranges go through a
:class:`RangeSink`; :func:`recording_to` swaps it, so a test (or another tool) can see exactly
which ranges a run opens.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from stagemfu.deps import require
from stagemfu.errors import ModelConfigError

if TYPE_CHECKING:
    import torch

DOMAIN = "stagemfu"
PREFILL = "prefill"
DECODE = "decode"
F = TypeVar("F", bound=Callable[..., Any])


class RangeSink(Protocol):
    """Where push/pop ranges go: the NVTX domain, or a recorder in tests."""

    def push(self, name: str) -> None: ...

    def pop(self) -> None: ...


class NvtxSink:
    """Push/pop ranges in the ``stagemfu`` NVTX domain, one registered string per name.

    When no profiler is attached nvtx returns a do-nothing domain; ``push`` and ``pop`` then
    become no-ops without a lookup, which keeps the cost of an unprofiled range minimal.
    """

    def __init__(self) -> None:
        require("nvtx", needed_for="recording stage ranges")
        import nvtx

        self._domain = nvtx.get_domain(DOMAIN)
        self._attributes: dict[str, Any] = {}
        self.attached = type(self._domain).__name__ != "DummyDomain"
        if not self.attached:
            self.push = _ignore_name  # type: ignore[method-assign]
            self.pop = _nothing  # type: ignore[method-assign]

    def push(self, name: str) -> None:
        attributes = self._attributes.get(name)
        if attributes is None:
            attributes = self._attributes[name] = self._domain.get_event_attributes(message=name)
        self._domain.push_range(attributes)

    def pop(self) -> None:
        self._domain.pop_range()


def _ignore_name(name: str) -> None:
    return None


def _nothing() -> None:
    return None


_sink: RangeSink | None = None


def ranges() -> RangeSink:
    """The sink every range goes to (the NVTX domain, made on first use)."""
    global _sink
    if _sink is None:
        _sink = NvtxSink()
    return _sink


def recording() -> bool:
    """False when ranges go nowhere (no profiler attached): hooks are then not worth installing."""
    return getattr(ranges(), "attached", True)


@contextmanager
def recording_to(sink: RangeSink) -> Iterator[RangeSink]:
    """Send every range to ``sink`` while the block runs (then back to the previous sink)."""
    global _sink
    previous, _sink = _sink, sink
    try:
        yield sink
    finally:
        _sink = previous


def synchronize() -> None:
    """Wait for the GPU (``torch.cuda.synchronize``), when CUDA is in use; else nothing."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class stage:  # lower case: used like a function, `with stage("prefill")`, `@stage("decode")`
    """One named range around a block (context manager) or around every call (decorator).

    Parameters
    ----------
    name
        The range name, e.g. ``"prefill"``; stagemfu's reports group by it.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> stage:
        ranges().push(self.name)
        return self

    def __exit__(self, *exc: object) -> None:
        ranges().pop()

    def __call__(self, fn: F) -> F:
        @functools.wraps(fn)
        def ranged(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        return ranged  # type: ignore[return-value]


class Instrumentation:
    """The hooks and method wrappers :func:`instrument` put on a model; ``remove()`` takes them off.

    Also a context manager: they come off at the end of the ``with`` block.
    """

    def __init__(self, handles: list[Any]) -> None:
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class _MethodWrapper:
    """A range around every call of one bound method, set on its instance; ``remove()`` unsets it."""

    def __init__(self, method: Any, attribute: str, name: str, sync: bool) -> None:
        self._owner, self._attribute = method.__self__, attribute

        @functools.wraps(method)
        def ranged(*args: Any, **kwargs: Any) -> Any:
            ranges().push(name)
            try:
                return method(*args, **kwargs)
            finally:
                if sync:
                    synchronize()
                ranges().pop()

        vars(self._owner)[attribute] = ranged

    def remove(self) -> None:
        vars(self._owner).pop(self._attribute, None)


def instrument(model: torch.nn.Module, stages: Mapping[str, str], *, sync: bool = False) -> Instrumentation:
    """Put a range around each named submodule's forward, or each call of a named method.

    Parameters
    ----------
    model
        The model holding the submodules.
    stages
        Range name -> dotted attribute path below ``model``: a submodule (forward hooks, e.g.
        ``{"sam": "model.vision_tower.sam_encoder"}``) or a bound method (wrapped on its
        instance, e.g. ``{"vision": "model.get_image_features"}``), as
        :func:`stagemfu.models.build.stage_modules` returns them.
    sync
        Wait for the GPU before each range ends, so its wall time covers its GPU work (this
        serializes CPU and GPU; see docs/collect.md).

    Returns
    -------
    Instrumentation
        Call ``.remove()`` (or use it as a context manager) to take the hooks off. Without a
        profiler attached it holds no hooks: the paths are still checked.

    Raises
    ------
    ModelConfigError
        A path names neither a submodule nor a method of ``model``.
    """
    targets = {name: _resolve(model, name, path) for name, path in stages.items()}
    if not recording():
        return Instrumentation([])
    handles: list[Any] = []
    for name, (target, path) in targets.items():
        if hasattr(target, "register_forward_pre_hook"):
            handles.append(target.register_forward_pre_hook(_pusher(name)))
            handles.append(target.register_forward_hook(_popper(sync), always_call=True))
        else:
            handles.append(_MethodWrapper(target, path.rpartition(".")[2], name, sync))
    return Instrumentation(handles)


def _resolve(model: Any, name: str, path: str) -> tuple[Any, str]:
    target = model
    try:
        for part in filter(None, path.split(".")):
            target = getattr(target, part)
    except AttributeError as err:
        children = ", ".join(n for n, _ in model.named_children())
        raise ModelConfigError(
            f"stage {name!r}: the model has no {path!r} ({err}); its top-level modules are: {children}"
        ) from err
    if not (hasattr(target, "register_forward_pre_hook") or hasattr(target, "__self__")):
        raise ModelConfigError(f"stage {name!r}: {path!r} is neither a submodule nor a method of the model")
    return target, path


def _pusher(name: str) -> Callable[..., None]:
    def push(module: Any, args: Any) -> None:
        ranges().push(name)

    return push


def _popper(sync: bool) -> Callable[..., None]:
    def pop(module: Any, args: Any, output: Any) -> None:
        if sync:
            synchronize()
        ranges().pop()

    return pop


class GenerationStages:
    """Ranges for one Hugging Face ``generate`` call: ``prefill``, then one ``decode`` per token.

    ``prefill`` opens when the block starts and lasts until the second forward call: it holds
    what ``generate`` does before the first token, including the image encoding that recent
    transformers versions run before the first forward, and that forward itself. Each later
    forward call (one per generated token after the first) closes the previous range and opens
    a ``decode`` range, so a range also holds its step's token choice (logits processing,
    argmax, stopping checks). The last range closes when the block ends. Use one ``with`` block
    per ``generate`` call. Without a profiler attached the block does nothing.
    """

    def __init__(self, model: torch.nn.Module, *, sync: bool = False) -> None:
        self._model = model
        self._sync = sync
        self._steps = 0
        self._open = False
        self._handle: Any = None

    @property
    def steps(self) -> int:
        """Forward calls seen so far: 1 prefill + the decode steps (0 when not recording)."""
        return self._steps

    def __enter__(self) -> GenerationStages:
        self._steps = 0
        if recording():
            self._handle = self._model.register_forward_pre_hook(self._next_step)
            ranges().push(PREFILL)
            self._open = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._close()

    def _next_step(self, module: Any, args: Any) -> None:
        self._steps += 1
        if self._steps > 1:
            self._close()
            ranges().push(DECODE)
            self._open = True

    def _close(self) -> None:
        if self._open:
            if self._sync:
                synchronize()
            ranges().pop()
            self._open = False


def generation_stages(model: torch.nn.Module, *, sync: bool = False) -> GenerationStages:
    """Split one ``model.generate(...)`` call into ``prefill`` and per-token ``decode`` ranges.

    Parameters
    ----------
    model
        The model whose ``generate`` is called (its forward runs once per generated token).
    sync
        Wait for the GPU before each range ends.

    Examples
    --------
    >>> with generation_stages(model):  # doctest: +SKIP
    ...     model.generate(**inputs, max_new_tokens=8, min_new_tokens=8)
    """
    return GenerationStages(model, sync=sync)
