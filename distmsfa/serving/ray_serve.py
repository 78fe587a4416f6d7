"""The Ray Serve adapter: three composed deployments around the plain-Python pipeline.

    HTTP -> Ingress (FastAPI: auth, limits, multipart)  -> Preprocess (CPU: read, resample,
            crop, fingerprint checks; Grad-CAM rendering) -> Model (fold ensemble, GPU when
            there is one, ``@serve.batch`` dynamic batching)

Each deployment scales on its own resource (``ServeSettings``: replicas, GPUs, batch size).
Queues are bounded: the ingress takes ``max_ongoing_requests`` at a time per replica and
queues ``max_queued_requests``; beyond that Serve answers 429 with ``Retry-After``
(``BackpressureConfig``).  An inner deployment's full queue (``BackPressureError``) becomes
503 with ``Retry-After``.  Errors are ``{"error": {"code", "message"}}``.

``app_builder`` is the entry point of ``serve run``/``serve build`` (args = ServeSettings);
``build_app`` takes a ``ServeSettings``; ``serving.runner.start`` runs it on a Ray cluster (the CLI).
"""
# No `from __future__ import annotations`: FastAPI must see the real `Request` annotation.
import asyncio
import collections
import logging
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve.config import BackpressureConfig
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from distmsfa.serving import auth
from distmsfa.serving.errors import (BAD_REQUEST, GATEWAY_TIMEOUT, PAYLOAD_TOO_LARGE, REQUEST_TIMEOUT, UNAUTHORIZED,
                                     UNAVAILABLE, ServeError, error_body)
from distmsfa.serving.service import (build_answer, new_request_id, predictor_info, prepare_upload,
                                      split_prediction)
from distmsfa.serving.settings import ServeSettings
from distmsfa.serving.uploads import MultipartCollector, Upload

log = logging.getLogger("distmsfa.serving")
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}

api = FastAPI(title="distmsfa scoring service", version="1", docs_url="/v1/docs", redoc_url=None,
              openapi_url="/v1/openapi.json")


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException):  # 404/405 in the same JSON shape
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)


def _request_id() -> str:
    """Serve's own request id (the X-Request-Id header and access log carry it), else a new one."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or new_request_id()
    except Exception:  # noqa: BLE001 - a private API: fall back
        return new_request_id()


def _error(exc: ServeError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _prepare_only_predictor(bundle: str):
    """The bundle's preprocessing and fingerprint checks without its weights (the CPU
    deployment needs no model): an EnsemblePredictor with no fold models."""
    from pathlib import Path

    from distmsfa.bundle.layout import bundle_checksum, verify_bundle
    from distmsfa.bundle.predictor import EnsemblePredictor
    from distmsfa.training.loop import resolve_runtime

    meta = verify_bundle(bundle)
    return EnsemblePredictor(Path(bundle), meta, [], resolve_runtime("auto", "cpu"), bundle_checksum(bundle))


@serve.deployment(name="Preprocess")
class Preprocess:
    """CPU stage: upload bytes -> model input (2, D, H, W) + facts (the ROI predicted by the
    bundle's localiser when the request has none); Grad-CAM maps -> files + per-joint evidence."""

    def __init__(self, settings: dict) -> None:
        from distmsfa.localiser.bundle import bundle_localiser

        self.s = ServeSettings.from_dict(settings)
        self.predictor = _prepare_only_predictor(self.s.bundle)
        self.localiser = bundle_localiser(self.s.bundle)  # None: requests without an ROI get roi_required
        log.info("preprocess: %s", "localiser loaded (requests without an ROI are scored)" if self.localiser
                 else "no localiser in the bundle (requests without an ROI are refused)")

    def _prepare(self, upload: Upload, return_roi: bool) -> dict:
        try:
            return prepare_upload(self.predictor, upload, max_unzipped_bytes=self.s.max_unzipped_bytes,
                                  max_entries=self.s.max_zip_entries, localiser=self.localiser, return_roi=return_roi)
        except ServeError as exc:
            return {"error": {"status": exc.status, "code": exc.code, "message": exc.message}}

    async def prepare(self, upload: Upload, return_roi: bool = False) -> dict:
        return await asyncio.to_thread(self._prepare, upload, return_roi)

    async def render(self, maps: dict, pair: np.ndarray, facts: dict, t1_geometry: dict,
                     roi_crop: np.ndarray | None = None, note: str | None = None) -> dict:
        from distmsfa.serving.heatmaps import gradcam_outputs

        return await asyncio.to_thread(gradcam_outputs, maps, pair, facts, t1_geometry, roi_crop, note)


@serve.deployment(name="Model")
class Model:
    """The bundle's fold ensemble; ``predict`` is batched across concurrent requests."""

    def __init__(self, settings: dict) -> None:
        from distmsfa.bundle import load_bundle

        self.s = ServeSettings.from_dict(settings)
        # The fold ensemble is compiled (on CUDA) for exactly max_batch cases: a smaller dynamic
        # batch is padded to it, so no batch size ever recompiles; warmup() compiles before the
        # first request instead of during it.
        self.predictor = load_bundle(self.s.bundle, batch_size=self.s.max_batch)
        if self.predictor.compiled:
            self.predictor.warmup()
        self.info = predictor_info(self.predictor)
        self.batch_sizes: collections.Counter = collections.Counter()
        self.predict.set_max_batch_size(self.predictor.batch_size)
        self.predict.set_batch_wait_timeout_s(self.s.batch_wait_s)
        p = self.predictor
        compiled = f", compiled in {p.compile_s:.1f} s" if p.compiled else ""
        log.info("model %s loaded on %s (%s%s, batch %d; bundle %s)", p.model_name, p.device, p.precision, compiled,
                 p.batch_size, p.checksum[:12])

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def predict(self, pairs: list[np.ndarray]) -> list[dict]:
        x = np.stack(pairs).astype(np.float32)
        pred = await asyncio.to_thread(self.predictor.predict, x)
        self.batch_sizes[len(pairs)] += 1
        log.info("model batch of %d", len(pairs))
        return [split_prediction(pred, i) for i in range(len(pairs))]

    async def gradcam(self, pair: np.ndarray) -> dict:
        maps = await asyncio.to_thread(self.predictor.gradcam, pair[None].astype(np.float32))
        return {k: np.asarray(v[0], np.float32) for k, v in maps.items()}

    def card(self) -> dict:
        meta = self.predictor.meta
        return {
            **self.info,
            "cv_metrics": meta.get("cv_metrics"),
            "selection": meta.get("selection"),
            "versions": meta.get("versions"),
            "preprocess": meta.get("preprocess"),
            "format": meta.get("format"),
            "created": (meta.get("source") or {}).get("created"),
            "device": str(self.predictor.device),
            "localiser": meta.get("localiser"),
            "intended_use": "research use only; not a medical device",
        }

    def stats(self) -> dict:
        return {"batch_sizes": {int(k): int(v) for k, v in sorted(self.batch_sizes.items())},
                "requests": int(sum(k * v for k, v in self.batch_sizes.items()))}


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """HTTP: API key, size limits, body timeout, multipart parsing, composition, error JSON."""

    def __init__(self, preprocess, model, settings: dict) -> None:
        self.s = ServeSettings.from_dict(settings)
        self.pre = preprocess
        self.model = model
        digest = self.s.api_key_sha256
        if digest is None:
            key = auth.read_key()  # DISTMSFA_API_KEY_FILE / DISTMSFA_API_KEY in the replica's env
            digest = auth.key_digest(key) if key else None
        if digest is None and not self.s.allow_no_key:
            raise RuntimeError("no API key: set api_key_sha256, DISTMSFA_API_KEY_FILE or DISTMSFA_API_KEY "
                               "(or allow_no_key on loopback only)")
        self.digest = digest
        # Drain (docs/operations.md): `begin_drain` turns new predictions away with 503 while
        # the `_in_flight` ones are answered; `distmsfa serve` waits for `in_flight() == 0`.
        self._in_flight = 0
        self._draining = False

    def begin_drain(self) -> int:
        """Stop accepting predictions (new ones: 503 + Retry-After); return how many are in flight."""
        self._draining = True
        return self._in_flight

    def in_flight(self) -> int:
        """Predictions this replica has accepted and not yet answered."""
        return self._in_flight

    # -- security and limits ---------------------------------------------------------
    def _check_key(self, request: Request) -> None:
        if self.digest is None:  # keyless only on loopback, whatever the proxy was bound to
            host = request.client.host if request.client else ""
            if host not in _LOOPBACK:
                raise ServeError(UNAUTHORIZED, "unauthorized", "this server runs without a key and accepts loopback clients only")
            return
        if not auth.key_matches(auth.presented_key(request.headers), self.digest):
            raise ServeError(UNAUTHORIZED, "unauthorized",
                             "missing or wrong API key; send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                             headers={"WWW-Authenticate": "Bearer"})

    async def _read_upload(self, request: Request) -> Upload:
        limit = self.s.max_upload_bytes
        length = request.headers.get("content-length")
        if length is not None:
            try:
                n_declared = int(length)
            except ValueError:
                raise ServeError(BAD_REQUEST, "bad_request", "Content-Length is not a number") from None
            if n_declared > limit:
                raise ServeError(PAYLOAD_TOO_LARGE, "payload_too_large",
                                 f"upload of {n_declared / 2**20:.1f} MiB exceeds the limit {limit / 2**20:.0f} MiB",
                                 headers={"Connection": "close"})
        collector = MultipartCollector(request.headers.get("content-type"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.s.upload_timeout_s
        stream = request.stream().__aiter__()
        n = 0
        while True:
            wait = min(self.s.body_timeout_s, deadline - loop.time())
            try:
                if wait <= 0:
                    raise asyncio.TimeoutError
                chunk = await asyncio.wait_for(stream.__anext__(), wait)
            except StopAsyncIteration:
                break
            except asyncio.TimeoutError:
                raise ServeError(REQUEST_TIMEOUT, "body_timeout",
                                 f"the request body was not received in time (idle > {self.s.body_timeout_s:g} s or "
                                 f"total > {self.s.upload_timeout_s:g} s)", headers={"Connection": "close"}) from None
            except Exception as exc:  # noqa: BLE001 - starlette's ClientDisconnect and friends
                raise ServeError(BAD_REQUEST, "client_disconnected", f"body not received ({type(exc).__name__})") from None
            n += len(chunk)
            if n > limit:
                raise ServeError(PAYLOAD_TOO_LARGE, "payload_too_large",
                                 f"upload exceeds the limit {limit / 2**20:.0f} MiB", headers={"Connection": "close"})
            collector.feed(chunk)
        return collector.finish()

    # -- scoring ---------------------------------------------------------------------
    async def _score(self, upload: Upload, gradcam: bool, return_roi: bool, rid: str, t_upload: float) -> dict:
        t0 = time.perf_counter()
        prep = await self.pre.prepare.remote(upload, return_roi)
        if "error" in prep:
            e = prep["error"]
            raise ServeError(e["status"], e["code"], e["message"])
        t1 = time.perf_counter()
        row = await self.model.predict.remote(prep["pair"])
        t2 = time.perf_counter()
        info = await self._info()
        answer = build_answer(case_id=upload.case_id, request_id=rid, row=row, predictor_info=info,
                              facts=prep["facts"], warnings=prep["warnings"],
                              timing={"upload": t_upload, "preprocess": t1 - t0, "model": t2 - t1}, roi=prep["roi"])
        if gradcam:
            maps = await self.model.gradcam.remote(prep["pair"])
            out = await self.pre.render.remote(maps, prep["pair"], prep["facts"], prep["t1_geometry"],
                                               prep["roi_crop"], prep["evidence_note"])
            answer["gradcam"] = out["gradcam"]
            answer["joint_evidence"] = out["joint_evidence"]
            if out["joint_evidence"] is None:
                answer["joint_evidence_note"] = out["joint_evidence_note"]
            answer["timing_ms"]["gradcam"] = round((time.perf_counter() - t2) * 1000.0, 2)
        return answer

    async def _info(self) -> dict:
        if not hasattr(self, "_info_cache"):
            card = await self.model.card.remote()
            self._info_cache = {k: card[k] for k in ("model", "threshold", "threshold_policy")}
        return self._info_cache

    @api.post("/v1/predict")
    async def predict(self, request: Request, gradcam: bool = False, return_roi: bool = False):
        if self._draining:
            return _error(ServeError(UNAVAILABLE, "shutting_down", "the server is shutting down; retry after the given "
                                     "delay (another replica or the restarted server will answer)",
                                     headers={"Retry-After": str(max(1, int(np.ceil(self.s.retry_after_s)))),
                                              "Connection": "close"}))
        self._in_flight += 1
        try:
            return await self._predict(request, gradcam, return_roi)
        finally:
            self._in_flight -= 1

    async def _predict(self, request: Request, gradcam: bool, return_roi: bool):
        rid = _request_id()
        t_start = time.perf_counter()
        case_id = None
        try:
            self._check_key(request)
            upload = await self._read_upload(request)
            case_id = upload.case_id
            t_upload = time.perf_counter() - t_start
            answer = await asyncio.wait_for(self._score(upload, gradcam, return_roi, rid, t_upload), self.s.request_timeout_s)
            answer["timing_ms"]["total"] = round((time.perf_counter() - t_start) * 1000.0, 2)
            log.info("request %s case %s: probability %.4f (roi %s)", rid, case_id or "-", answer["probability"],
                     answer["roi_source"])
            return JSONResponse(answer)
        except ServeError as exc:
            log.info("request %s case %s: %d %s", rid, case_id or "-", exc.status, exc.code)
            return _error(exc)
        except asyncio.TimeoutError:
            log.warning("request %s case %s: timed out", rid, case_id or "-")
            return _error(ServeError(GATEWAY_TIMEOUT, "timeout",
                                     f"the case took longer than {self.s.request_timeout_s:g} s; retry later"))
        except BackPressureError:
            return _error(ServeError(UNAVAILABLE, "overloaded", "the service is at capacity; retry after the given delay",
                                     headers={"Retry-After": str(max(1, int(np.ceil(self.s.retry_after_s))))}))
        except Exception as exc:  # noqa: BLE001 - the type only: a message could carry input text
            log.error("request %s case %s: internal error %s", rid, case_id or "-", type(exc).__name__)
            return JSONResponse(error_body("internal", f"internal error (request {rid}); the server log has the type"),
                                status_code=500)

    @api.get("/v1/health")
    async def health(self):
        try:  # asks a model replica each time (not the cached card): a dead model is not "ready"
            await asyncio.wait_for(self.model.card.remote(), 10.0)
        except Exception:  # noqa: BLE001
            return JSONResponse(error_body("not_ready", "models are not loaded yet"), status_code=UNAVAILABLE,
                                headers={"Retry-After": "5"})
        if self._draining:
            return JSONResponse(error_body("shutting_down", "the server is shutting down"), status_code=UNAVAILABLE,
                                headers={"Retry-After": str(max(1, int(np.ceil(self.s.retry_after_s))))})
        return {"status": "ready", "in_flight": self._in_flight}

    @api.get("/v1/model")
    async def model_card(self, request: Request):
        try:
            self._check_key(request)
        except ServeError as exc:
            return _error(exc)
        return await self.model.card.remote()

    @api.get("/v1/stats")
    async def stats(self, request: Request):
        """The model replica's batch-size histogram (one replica answers; see docs/serving.md)."""
        try:
            self._check_key(request)
        except ServeError as exc:
            return _error(exc)
        return await self.model.stats.remote()


def build_app(settings: ServeSettings):
    """The Serve application for ``settings`` (bound, ready for ``serve.run``)."""
    s = settings
    d = s.to_dict()
    inner_queue = max(4, 2 * s.ingress_replicas * (s.max_ongoing_requests + s.max_queued_requests))
    retry = BackpressureConfig(status_code=429, retry_after_s=s.retry_after_s)
    pre = Preprocess.options(
        num_replicas=s.preprocess_replicas, ray_actor_options={"num_cpus": s.cpus_per_preprocess},
        max_ongoing_requests=max(2, int(round(s.cpus_per_preprocess * 2))), max_queued_requests=inner_queue,
        graceful_shutdown_timeout_s=s.drain_timeout_s,
    ).bind(d)
    model = Model.options(
        num_replicas=s.model_replicas,
        ray_actor_options={"num_cpus": 1, "num_gpus": s.gpus_per_replica},
        max_ongoing_requests=max(2 * s.max_batch, 4), max_queued_requests=inner_queue,
        graceful_shutdown_timeout_s=s.drain_timeout_s,
    ).bind(d)
    return Ingress.options(
        num_replicas=s.ingress_replicas, ray_actor_options={"num_cpus": 0.25},
        max_ongoing_requests=s.max_ongoing_requests, max_queued_requests=s.max_queued_requests,
        backpressure_config=retry, graceful_shutdown_timeout_s=s.drain_timeout_s,
    ).bind(pre, model, d)


def app_builder(args: dict[str, Any]):
    """``serve run distmsfa.serving.ray_serve:app_builder bundle=/path/B`` / ``serve build``."""
    return build_app(ServeSettings.from_dict(dict(args)))
