"""Per-sample gradient clipping in one backward pass, for models whose trainable parameters are all in ``nn.Linear``.

Why this is written here: Opacus computes per-sample clipping in three ways. ``hooks``, ``ew`` and ``functorch``
build every record's full gradient and then clip it; ``ghost`` skips that but needs a second backward pass. On the
demo model (4,865 parameters, batch 64) each of them made a DP-SGD step about 3.5 to 8 times as slow as a plain
step, against a goal of at most 2. This module's step is 1.6 to 1.9 times (``benchmarks/privacy.py``,
``docs/benchmarks.md``). The single-pass method below (ghost norms with book-keeping,
Bu, Wang, Zha and Karypis, "Differentially Private Optimization on Large Model at Small Cost", ICML 2023) is not in
Opacus 1.6. Everything else stays Opacus': Poisson sampling, the noise, the scaling by the expected batch size and
the RDP accountant (``DPOptimizerFastGradientClipping``, the optimizer of Opacus' own ghost mode).

The method, for a layer ``y = a W^T + b`` applied to a batch of B rows with loss ``L = mean_i loss_i``: let ``g``
be ``dL/dy``, captured in the backward pass, and ``a`` the layer's input, captured in the forward pass. The gradient
of record i's own loss is ``G_i = B g_i a_i^T`` for ``W`` and ``B g_i`` for ``b``, so its squared norm is
``B^2 |g_i|^2 (|a_i|^2 + 1)``, the formula of Opacus' ``compute_linear_norm_sample``. Summing that over the layers
gives each record's full gradient norm ``n_i`` without forming ``G_i``. With Opacus' clip factor
``c_i = min(1, C / (n_i + 1e-6))``, the clipped sum ``sum_i c_i G_i`` is ``B (c * g)^T a`` for ``W`` and
``B sum_i c_i g_i`` for ``b``: one matrix product per layer. ``tests/unit/privacy/test_linear_clipping.py`` checks
the result against per-sample gradients that torch computes record by record.

Only this case is handled. Anything else raises (fails closed) rather than being clipped wrongly: a trainable
parameter outside ``nn.Linear``, an ``nn.Linear`` subclass with its own ``forward`` or extra parameters, a
parameter shared by two layers (tied weights), an input to a layer that is not (batch, features), a layer that
sees a different number of rows than the model's input has records (for example after a reshape of (B, T * F)
to (B * T, F), which would clip each of a record's T rows on its own), a layer used twice in one forward pass
(its per-sample gradient would be a sum of two products), a second backward pass before a step, a backward pass
with ``create_graph=True``, and trainable parameters that changed after ``make_private``. ``make_private`` uses
Opacus' ``ew`` mode for other models.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import Any

import torch
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _generate_noise
from torch import nn

from app_custom.core.privacy.errors import InvalidPrivacySetting

__all__ = ["LinearClipper", "LinearClippingDPOptimizer", "unsupported_parameters"]


def unsupported_parameters(model: nn.Module) -> list[str]:
    """Return the names of ``model``'s trainable parameters that ``LinearClipper`` cannot clip exactly.

    Those are parameters other than the ``weight`` or ``bias`` of an ``nn.Linear`` that runs ``nn.Linear.forward``,
    and every second name of a parameter that two modules share (tied weights). The clipper would replace a
    subclass's own ``forward``, and ``weight_norm``'s ``weight_g`` is not the weight the layer multiplies by.
    """
    names = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not parameter.requires_grad:
                continue
            if id(parameter) in seen or name not in ("weight", "bias") or not _runs_linear_forward(module):
                names.append(f"{module_name}.{name}" if module_name else name)
            seen.add(id(parameter))
    return names


def _runs_linear_forward(module: nn.Module) -> bool:
    if not isinstance(module, nn.Linear) or type(module).forward is not nn.Linear.forward:
        return False
    # An instance-level forward is allowed only where an earlier LinearClipper installed it.
    forward = vars(module).get("forward")
    return forward is None or (
        isinstance(forward, partial) and isinstance(getattr(forward.func, "__self__", None), LinearClipper)
    )


def _leading_size(value: Any) -> int | None:
    """Return the first dimension of the first tensor in ``value``, searching tuples, lists and dicts in order."""
    if isinstance(value, torch.Tensor):
        return value.shape[0] if value.dim() > 0 else None
    if isinstance(value, dict):
        value = list(value.values())
    if not isinstance(value, (tuple, list)):
        return None
    for item in value:
        size = _leading_size(item)
        if size is not None:
            return size
    return None


class _CapturingLinear(torch.autograd.Function):
    """``F.linear`` whose backward hands the layer's input and output gradient to the clipper.

    It returns no gradient for the weight and bias: the clipper computes their clipped sums, so autograd's own
    unclipped sums would be work thrown away. The input gradient flows on to the layers below as usual.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, activation: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, clipper: LinearClipper,
        layer: nn.Linear,
    ) -> torch.Tensor:
        ctx.save_for_backward(activation, weight)
        ctx.clipper, ctx.layer = clipper, layer
        return nn.functional.linear(activation, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:  # type: ignore[override]
        if torch.is_grad_enabled():
            # With create_graph=True, a later backward through grad_output @ weight would reach the weight
            # without passing the clipper.
            raise InvalidPrivacySetting(
                f"grad_sample_mode='fast_linear' cannot clip a backward pass with create_graph=True through "
                f"{ctx.layer}; use grad_sample_mode='ew'"
            )
        activation, weight = ctx.saved_tensors
        ctx.clipper._store(ctx.layer, activation, grad_output)
        grad_input = grad_output @ weight if ctx.needs_input_grad[0] else None
        return grad_input, None, None, None, None


class LinearClipper:
    """Captures each ``nn.Linear``'s input and output gradient and returns the clipped gradient sum per parameter.

    While attached, each trainable ``nn.Linear`` of the model runs through ``_CapturingLinear``: its output is the
    same, and backward leaves the layer's ``.grad`` untouched, because the optimizer takes the clipped sums from
    here. A forward pre-hook on ``model`` records how many records each call gets (the first dimension of its
    first tensor argument, as Opacus' ``ew`` mode takes it). A layer that gets another number of rows while
    gradients are enabled raises ``InvalidPrivacySetting``. ``remove()`` gives the layers their own ``forward`` back.

    Args:
        model: The model; every trainable parameter must belong to an ``nn.Linear``.

    Raises:
        InvalidPrivacySetting: ``model`` has a trainable parameter ``unsupported_parameters`` lists, or none at all.
    """

    def __init__(self, model: nn.Module) -> None:
        unsupported = unsupported_parameters(model)
        if unsupported:
            raise InvalidPrivacySetting(
                f"grad_sample_mode='fast_linear' needs every trainable parameter in an nn.Linear, but "
                f"{unsupported[:5]} are not; use grad_sample_mode='ew'"
            )
        self.layers = [
            module
            for module in model.modules()
            if isinstance(module, nn.Linear) and any(p.requires_grad for p in module.parameters(recurse=False))
        ]
        if not self.layers:
            raise InvalidPrivacySetting("grad_sample_mode='fast_linear' found no trainable nn.Linear in the model")
        # The trainable parameters of each layer, checked before each clipping: a parameter frozen, unfrozen or
        # replaced since then would be clipped with the wrong norm or stepped without clipping.
        self._trainable = {layer: _layer_state(layer) for layer in self.layers}
        self._inputs: dict[nn.Linear, torch.Tensor] = {}
        self._output_grads: dict[nn.Linear, torch.Tensor] = {}
        self._batch_size: int | None = None
        self._batch_hook = model.register_forward_pre_hook(self._record_batch_size, with_kwargs=True)
        for layer in self.layers:
            # An instance attribute shadows nn.Linear.forward; nn.Module.__call__ and its hooks still run.
            layer.forward = partial(self._forward, layer)  # type: ignore[method-assign]

    def remove(self) -> None:
        """Give the layers their own ``forward`` back and drop any captured batch."""
        self._batch_hook.remove()
        for layer in self.layers:
            if "forward" in vars(layer):
                del layer.forward
        self.reset()

    def reset(self) -> None:
        """Drop the captured batch, for example when a step is abandoned; ``optimizer.zero_grad()`` calls this."""
        self._inputs.clear()
        self._output_grads.clear()

    def _record_batch_size(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if torch.is_grad_enabled():
            self._batch_size = _leading_size((args, kwargs))

    def _forward(self, layer: nn.Linear, activation: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            if activation.dim() != 2:
                raise InvalidPrivacySetting(
                    f"grad_sample_mode='fast_linear' needs 2-D (batch, features) inputs to each nn.Linear, but "
                    f"{layer} got shape {tuple(activation.shape)}; use grad_sample_mode='ew'"
                )
            if activation.shape[0] != self._batch_size:
                raise InvalidPrivacySetting(
                    f"grad_sample_mode='fast_linear' needs one row per record in each nn.Linear, but {layer} got "
                    f"{activation.shape[0]} rows and the model's input has {self._batch_size} records (None: the "
                    "model was not called with a tensor). Call the model itself, without reshaping records into "
                    "several rows; use grad_sample_mode='ew' otherwise"
                )
        return _CapturingLinear.apply(activation, layer.weight, layer.bias, self, layer)  # type: ignore[no-any-return]

    def _store(self, layer: nn.Linear, activation: torch.Tensor, grad_output: torch.Tensor) -> None:
        if layer in self._output_grads:
            raise InvalidPrivacySetting(
                f"grad_sample_mode='fast_linear' got two gradients for {layer} before optimizer.step(): it ran "
                "twice in one forward pass (shared weights), or backward ran twice for one batch. Use "
                "grad_sample_mode='ew' for shared weights, and call optimizer.zero_grad() and step() around each "
                "backward (DP-SGD with Poisson sampling does not accumulate gradients)"
            )
        self._inputs[layer] = activation.detach()
        self._output_grads[layer] = grad_output.detach()

    def clipped_sums(
        self, max_grad_norm: float, batch_scale: str, out: dict[nn.Parameter, torch.Tensor] | None = None
    ) -> dict[nn.Parameter, torch.Tensor]:
        """Return ``sum_i c_i G_i`` for each trainable parameter, from the batch captured since the last forward.

        Args:
            max_grad_norm: The clipping bound C.
            batch_scale: ``"mean"`` if the loss averaged over the batch, ``"sum"`` if it summed.
            out: Tensors of the parameters' shapes to write the sums into, for every trainable parameter; new
                tensors are returned when it is None.

        Raises:
            InvalidPrivacySetting: A layer ran in the forward pass but got no gradient, or no batch was captured.
        """
        if not self._output_grads:
            raise InvalidPrivacySetting(
                "grad_sample_mode='fast_linear' has no batch to clip: run the model's forward and backward pass "
                "before optimizer.step()"
            )
        for layer, state in self._trainable.items():
            if _layer_state(layer) != state:
                raise InvalidPrivacySetting(
                    f"grad_sample_mode='fast_linear' found the trainable parameters of {layer} changed since "
                    "make_private (frozen, unfrozen or replaced); call make_private again after changing them"
                )
        missing = [layer for layer in self.layers if layer not in self._output_grads]
        if missing:
            raise InvalidPrivacySetting(
                f"grad_sample_mode='fast_linear' got no gradient for {missing[0]}: every trainable layer must take "
                "part in the loss"
            )
        batch_size = next(iter(self._inputs.values())).shape[0]
        # The states checked above are the ones recorded at make_private, so the recorded flags hold.
        plan = [(layer, state[1], state[3]) for layer, state in self._trainable.items()]
        first_grad = self._output_grads[self.layers[0]]
        squared_norms = torch.zeros(batch_size, dtype=first_grad.dtype, device=first_grad.device)
        for layer, weight_trainable, bias_trainable in plan:
            grad, activation = self._output_grads[layer], self._inputs[layer]
            if grad.shape[0] != batch_size or activation.shape[0] != batch_size:
                raise InvalidPrivacySetting(
                    f"grad_sample_mode='fast_linear' found {layer} with batch {activation.shape[0]}, but the batch "
                    f"has {batch_size} rows; every layer must see one row per record"
                )
            grad_squared = torch.linalg.vecdot(grad, grad)
            if weight_trainable:
                activation_squared = torch.linalg.vecdot(activation, activation).to(grad.dtype)
                squared_norms.addcmul_(grad_squared, activation_squared)
            if bias_trainable:
                squared_norms += grad_squared
        # With G_i = s g_i a_i^T (s = B for a mean loss), |G_i| = s * sqrt(squared_norms[i]). Opacus' clip factor
        # is c_i = min(1, C / (|G_i| + 1e-6)). The factor applied to g_i is s * c_i, which equals
        # min(s, C / (sqrt(squared_norms[i]) + 1e-6 / s)), four operations on the batch.
        scale = float(batch_size) if batch_scale == "mean" and batch_size else 1.0  # an empty batch has no rows
        clip_factors = torch.div(max_grad_norm, squared_norms.sqrt_().add_(1e-6 / scale))
        clip_factors = clip_factors.clamp_(max=scale).unsqueeze(1)
        sums: dict[nn.Parameter, torch.Tensor] = {}
        for layer, weight_trainable, bias_trainable in plan:
            clipped = self._output_grads[layer] * clip_factors
            if weight_trainable:
                weight = layer._parameters["weight"]
                target = None if out is None else out[weight]
                sums[weight] = torch.mm(clipped.T, self._inputs[layer].to(clipped.dtype), out=target)
            if bias_trainable:
                bias = layer._parameters["bias"]
                target = None if out is None else out[bias]
                sums[bias] = torch.sum(clipped, dim=0, out=target)
        self.reset()
        return sums


class LinearClippingDPOptimizer(DPOptimizerFastGradientClipping):
    """Opacus' DP optimizer with the clipped gradient sum taken from a ``LinearClipper``, kept in flat buffers.

    The clipped sums of all parameters are written into one flat tensor. The noise is then one call of Opacus'
    ``_generate_noise`` for the whole model, and the scaling by the expected batch size is one division. The noise is the same i.i.d. Gaussian of standard deviation
    ``noise_multiplier * max_grad_norm`` per coordinate, secure mode included; the accountant's step hook is Opacus'
    own. Each ``p.grad`` is a view of one flat gradient buffer that every step overwrites, and ``zero_grad()``
    zeroes it rather than setting ``p.grad`` to None. An empty Poisson batch is stepped with
    ``step_empty_batch()``, which releases noise only.

    Each step first checks that the optimizer would update only those parameters: a parameter frozen, unfrozen
    or added to it since (``add_param_group``), or any other parameter with a ``.grad``, would be stepped with a
    stale or unclipped gradient. Opacus' ``signal_skip_step`` (``BatchMemoryManager``) is refused, because each
    step clips one batch and does not accumulate.

    Raises:
        InvalidPrivacySetting: The optimizer's parameters are not exactly the trainable parameters of the clipper's
            layers, or they differ in dtype or device; at a step, also when they changed since.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, clipper: LinearClipper, **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)
        covered = {id(parameter) for layer in clipper.layers for parameter in _trainable(layer.parameters())}
        params = list(self.params)
        if covered != {id(parameter) for parameter in params}:
            raise InvalidPrivacySetting(
                "grad_sample_mode='fast_linear' needs an optimizer over exactly the model's trainable nn.Linear "
                "parameters; build it on model.parameters()"
            )
        kinds = {(parameter.dtype, parameter.device) for parameter in params}
        if len(kinds) != 1:
            raise InvalidPrivacySetting(
                f"grad_sample_mode='fast_linear' needs one dtype and device for all parameters, found "
                f"{sorted(map(str, kinds))}"
            )
        self._clipper = clipper
        self._empty_batch = False
        self._params = params
        self._param_ids = {id(parameter) for parameter in params}
        size = sum(parameter.numel() for parameter in params)
        self._summed = torch.zeros(size, dtype=params[0].dtype, device=params[0].device)
        self._grad = torch.zeros_like(self._summed)
        self._summed_views = dict(zip(params, _views(self._summed, params)))
        self._grad_views = _views(self._grad, params)
        for parameter, summed, grad in zip(params, self._summed_views.values(), self._grad_views):
            parameter.summed_grad = summed
            parameter.grad = grad

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the flat gradient buffer and drop the clipper's captured batch.

        ``set_to_none`` is accepted for the optimizer interface; ``p.grad`` stays a view of the buffer either way.
        """
        self._clipper.reset()
        self._grad.zero_()

    def signal_skip_step(self, do_skip: bool = True) -> None:
        """Reject a skipped step, because each step clips and releases one batch and nothing accumulates."""
        if do_skip:
            raise InvalidPrivacySetting(
                "grad_sample_mode='fast_linear' cannot skip steps to accumulate physical batches "
                "(signal_skip_step, BatchMemoryManager); use grad_sample_mode='ew'"
            )
        super().signal_skip_step(do_skip)

    def accumulate(self) -> None:
        """Write the clipped gradient sum of the batch (zero for an empty batch) into the flat buffer."""
        self._check_parameters()
        if self._empty_batch:
            self._summed.zero_()
        else:
            self._clipper.clipped_sums(self.max_grad_norm, self.loss_reduction, out=self._summed_views)

    def _check_parameters(self) -> None:
        for group in self.param_groups:
            for parameter in group["params"]:
                ours = id(parameter) in self._param_ids
                if ours != parameter.requires_grad or (not ours and parameter.grad is not None):
                    raise InvalidPrivacySetting(
                        f"grad_sample_mode='fast_linear' would step a parameter of shape {tuple(parameter.shape)} "
                        "that it does not clip: the optimizer's trainable parameters changed since make_private "
                        "(frozen, unfrozen or added with add_param_group), or a parameter it does not clip has a "
                        ".grad. Call make_private again after changing them"
                    )

    def add_noise(self) -> None:
        """Set the gradients to the clipped sums plus Gaussian noise, drawn by Opacus for the whole model at once."""
        noise = _generate_noise(
            std=self.noise_multiplier * self.max_grad_norm,
            reference=self._summed,
            generator=self.generator,
            secure_mode=self.secure_mode,
        )
        torch.add(self._summed, noise, out=self._grad)
        for parameter, grad in zip(self._params, self._grad_views):
            if parameter.grad is not grad:  # someone set p.grad; the step must use the noised buffer
                parameter.grad = grad

    def scale_grad(self) -> None:
        """Divide the noised gradients by the expected batch size (a mean loss), as Opacus does."""
        if self.loss_reduction == "mean":
            self._grad /= self.expected_batch_size * self.accumulated_iterations

    def step_empty_batch(self) -> None:
        """Take a noise-only step for an empty Poisson batch; the accountant counts it like any other."""
        self._empty_batch = True
        try:
            self.step()
        finally:
            self._empty_batch = False


def _views(flat: torch.Tensor, params: Iterable[nn.Parameter]) -> list[torch.Tensor]:
    views, offset = [], 0
    for parameter in params:
        views.append(flat[offset : offset + parameter.numel()].view_as(parameter))
        offset += parameter.numel()
    return views


def _layer_state(layer: nn.Linear) -> tuple[int, bool, int, bool]:
    """Return the ids of a layer's weight and bias, each with whether it is trainable."""
    parameters = layer._parameters  # one dict lookup instead of two nn.Module.__getattr__ calls per step
    weight, bias = parameters["weight"], parameters.get("bias")
    return (
        id(weight),
        weight is not None and weight.requires_grad,
        id(bias),
        bias is not None and bias.requires_grad,
    )


def _trainable(parameters: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    return [parameter for parameter in parameters if parameter.requires_grad]
