"""Serve's application builder: `build_app(AppArgs)` binds the deployment graph
(serve_config.yaml's import_path; `reco serve start` deploys it).

    Ingress (FastAPI, N replicas) -> Variant<name> per settings variant (autoscaled) -> registry
       |-> ServingState (exactly one: leases, experiment, metric sums) <- diversity variants,
       |                                                                   RecoLog
       `-> RecoLog (produces the reco log to events.reco)

Run-time knobs arrive through `user_config` (`reconfigure`): the default split and salt on
the ingress, the diversity strengths on the variants whose model is `diversity_knn`.
"""

# No `from __future__ import annotations`: Serve reads build_app's parameter annotation as a
# class to validate the config's args into AppArgs (a string would hand it the raw dict).

from ray.serve import Application
from ray.serve.deployment import Deployment

from backend.core.settings import Settings
from backend.serving.deployments import Ingress, RecoLogDeployment, ServingState, VariantDeployment
from backend.serving.schemas import AppArgs


def _deployment(decorated: object) -> Deployment:
    """A `@serve.deployment` class as what it is at run time (type checkers keep a decorated
    class's own type)."""
    if not isinstance(decorated, Deployment):
        raise TypeError(f"{decorated!r} is not a Serve deployment")
    return decorated


def build_app(args: AppArgs) -> Application:
    """Serve's typed application builder. Settings come from the RECO_* environment, which
    `reco serve start` puts in the app's runtime_env."""
    settings = Settings()
    state = _deployment(ServingState).bind(settings)
    variant = _deployment(VariantDeployment)
    variants = {}
    for name, spec in settings.variants.items():
        if spec.model == "diversity_knn":  # follows the shared run-time knobs
            variants[name] = variant.options(
                name=f"Variant{name}", user_config={"runtime": args.b_runtime}
            ).bind(settings, name, state)
        else:
            variants[name] = variant.options(name=f"Variant{name}").bind(settings, name)
    reco_log = _deployment(RecoLogDeployment).bind(settings, state)
    return _deployment(Ingress).options(
        num_replicas=args.ingress_replicas, user_config={"split": args.split, "salt": args.salt}
    ).bind(settings, variants, state, reco_log)
