"""The real kubelet node's identity: its client certificate (``system:node:<name>``, group
``system:nodes``) from the cluster's client CA, and its kubeconfig."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.testbed.cluster import Cluster
from tests.testbed.pki import CertPair


def issue_client_cert(
    ca_dir: Path, out_dir: Path, name: str, *, organizations: tuple[str, ...]
) -> CertPair:
    """A client certificate signed by the CA whose ``ca.crt``/``ca.key`` are in ``ca_dir``."""
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(ca_cert.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    stem = name.replace(":", "-")
    pair = CertPair(out_dir / f"{stem}.crt", out_dir / f"{stem}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pair.key.chmod(0o600)
    return pair


def write_kubeconfig(path: Path, cluster: Cluster, pair: CertPair) -> Path:
    """The kubelet's kubeconfig (mode 0600): ``cluster``'s API server as the client ``pair``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster.name,
                "cluster": {
                    "server": cluster.server,
                    "certificate-authority": str(cluster.ca_file),
                },
            }
        ],
        "users": [
            {
                "name": "kubelet",
                "user": {"client-certificate": str(pair.cert), "client-key": str(pair.key)},
            }
        ],
        "contexts": [{"name": "kubelet", "context": {"cluster": cluster.name, "user": "kubelet"}}],
        "current-context": "kubelet",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path
