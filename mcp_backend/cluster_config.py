"""Where each cluster is and how to trust it: a cluster entry of the settings (server URL + CA,
optional token audience, identity domain and token exchange), and the entries read from a
kubeconfig or from the pod the backend runs in. The backend owns no cluster credentials: an entry
never holds one."""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kmg_common.settings import SettingsError, read_yaml_mapping

IN_CLUSTER_TOKEN_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ConfigSection(BaseModel):
    """A part of the settings: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenExchangeConfig(ConfigSection):
    """RFC 8693 exchange of the caller's token for one the cluster trusts (foreign domains)."""

    url: str = Field(description="token endpoint of the exchange service (POST, form encoded)")
    audience: str = Field(description="`audience` asked for: the cluster's domain / client id")
    timeout_s: float = Field(5.0, gt=0, description="timeout of one exchange call")
    client_id: str | None = Field(None, description="HTTP Basic client id at the exchange service")
    client_secret_file: Path | None = Field(None, description="file holding the client secret")
    client_secret_env: str | None = Field(None, description="env var holding the client secret")
    ca_file: Path | None = Field(None, description="CA bundle of the exchange service's TLS cert")

    def client_secret(self) -> str | None:
        """The client secret from its file or env var (never from the YAML itself)."""
        if self.client_secret_file is not None:
            try:
                return self.client_secret_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise SettingsError(
                    f"token_exchange: cannot read client_secret_file {self.client_secret_file}: "
                    f"{exc.strerror}"
                ) from None
        if self.client_secret_env is not None:
            value = os.environ.get(self.client_secret_env)
            if not value:
                raise SettingsError(f"token_exchange: env var {self.client_secret_env} is empty")
            return value
        return None


class ClusterConfig(ConfigSection):
    """One API server the backend can reach. Never holds credentials."""

    name: str = Field(description="the `context` value tools take")
    server: str = Field(description="API server URL, e.g. https://10.0.0.1:6443")
    ca_file: Path | None = Field(None, description="PEM CA bundle that signs the API server cert")
    ca_data: str | None = Field(None, description="the same, inline PEM or base64 of PEM")
    insecure_skip_tls_verify: bool = Field(False, description="test only: skip TLS verification")
    token_audience: str | None = Field(None, description="audience tokens for this cluster carry")
    domain: str | None = Field(None, description="identity domain (realm) the cluster trusts")
    token_exchange: TokenExchangeConfig | None = Field(
        None, description="exchange the caller's token before calling this cluster"
    )
    default: bool = Field(False, description="the cluster used when `context` is omitted")

    @field_validator("name")
    @classmethod
    def _name_ok(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@:/-]{0,252}", value):
            raise ValueError("cluster name must be 1-253 chars of letters, digits and ._@:/-")
        return value

    @field_validator("server")
    @classmethod
    def _server_ok(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("server must be an http(s) URL such as https://127.0.0.1:6443")
        return value.rstrip("/")

    def ca_pem(self) -> str | None:
        """The CA bundle as PEM text (from ``ca_data`` or ``ca_file``), or None for system CAs."""
        if self.ca_data:
            data = self.ca_data.strip()
            if "-----BEGIN" in data:
                return data
            try:
                return base64.b64decode(data, validate=True).decode()
            except ValueError as exc:
                raise SettingsError(
                    f"cluster {self.name!r}: ca_data is neither PEM nor base64 of PEM"
                ) from exc
        if self.ca_file is not None:
            try:
                return self.ca_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError(
                    f"cluster {self.name!r}: cannot read ca_file {self.ca_file}: {exc.strerror}"
                ) from None
        return None


def clusters_from_kubeconfig(path: Path) -> list[ClusterConfig]:
    """Server URL + CA of every cluster in a kubeconfig; users and credentials are ignored (so
    a kubeconfig holding them is fine: it is not a settings file)."""
    data = read_yaml_mapping(path)
    current = data.get("current-context")
    contexts = {c.get("name"): (c.get("context") or {}) for c in data.get("contexts") or []}
    default_cluster = contexts.get(current, {}).get("cluster") if current else None
    out: list[ClusterConfig] = []
    for entry in data.get("clusters") or []:
        name = entry.get("name")
        spec = entry.get("cluster") or {}
        if not name or not spec.get("server"):
            raise SettingsError(f"{path}: a cluster entry lacks 'name' or 'cluster.server'")
        ca_file = spec.get("certificate-authority")
        if ca_file is not None and not Path(ca_file).is_absolute():
            ca_file = str(path.parent / ca_file)
        try:
            out.append(
                ClusterConfig.model_validate(
                    {
                        "name": name,
                        "server": spec["server"],
                        "ca_file": ca_file,
                        "ca_data": spec.get("certificate-authority-data"),
                        "insecure_skip_tls_verify": bool(spec.get("insecure-skip-tls-verify")),
                        "default": name == default_cluster,
                    }
                )
            )
        except ValidationError as exc:
            raise SettingsError(f"{path}: cluster {name!r}: {exc.errors()[0]['msg']}") from None
    return out


def in_cluster_config(environ: Mapping[str, str] | None = None) -> ClusterConfig:
    """The cluster the backend runs in (service host env + mounted CA), named ``in-cluster``."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise SettingsError("in_cluster is set but KUBERNETES_SERVICE_HOST is not: not in a pod?")
    if ":" in host:
        host = f"[{host}]"
    return ClusterConfig.model_validate(
        {
            "name": "in-cluster",
            "server": f"https://{host}:{port}",
            "ca_file": IN_CLUSTER_TOKEN_DIR / "ca.crt",
        }
    )
