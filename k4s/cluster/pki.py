"""Issues what `k4s.cluster.certs` names: keys, certificates and kubeconfigs.

ECDSA P-256 throughout: a key is generated in a millisecond (RSA-2048 takes
tens, hundreds under QEMU TCG), and every component accepts it.

`ensure` is idempotent: a valid certificate is kept. A leaf is re-issued when
it is missing, unreadable, not signed by its CA, about to expire, or no longer
names what it must (its SANs or subject changed, e.g. the node IP moved); CAs
are kept, so everything already trusted stays trusted.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from k4s.cluster.certs import (
    ADMIN,
    CA,
    CAS,
    CLIENT,
    CLIENT_CA_BUNDLE,
    CLUSTER_CA,
    OPERATOR_CA,
    SERVER,
    SERVICE_ACCOUNT,
    Files,
    Identity,
    Leaf,
    leaves,
)
from k4s.config import Config
from k4s.errors import K4sError
from k4s.fsutil import write_atomic
from k4s.layout import Paths

CA_DAYS = 3650
LEAF_DAYS = 365
RENEW_MIN = dt.timedelta(minutes=10)
CA_WARN = dt.timedelta(days=365)  # `pki check` and the metrics warn this long before a CA expires
BACKDATE = dt.timedelta(hours=1)  # a diskless node's clock may lag the clock that issued
KEY_MODE = 0o600
CERT_MODE = 0o644

@dataclass
class Result:
    name: str
    action: str  # created | kept | renewed | recovered
    reason: str = ""


@dataclass
class Problem:
    name: str
    expires: dt.datetime | None
    problems: list[str] = field(default_factory=list)


# --- keys and certificates -------------------------------------------------------------

def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str, orgs: Iterable[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue_ca(ca: CA, key: ec.EllipticCurvePrivateKey | None = None) -> tuple[ec.EllipticCurvePrivateKey,
                                                                           x509.Certificate]:
    key = key or new_key()
    now = _now()
    name = _name(ca.common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_leaf(leaf: Leaf, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
               days: float = LEAF_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = new_key()
    now = _now()
    eku = []
    if SERVER in leaf.usages:
        eku.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if CLIENT in leaf.usages:
        eku.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(leaf.common_name, leaf.organizations)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if leaf.dns_names or leaf.ip_addresses:
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in leaf.dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in leaf.ip_addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def cert_sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return ({f"DNS:{d}" for d in ext.get_values_for_type(x509.DNSName)}
            | {f"IP:{i}" for i in ext.get_values_for_type(x509.IPAddress)})


def _subject(cert: x509.Certificate) -> tuple[str, tuple[str, ...]]:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return (str(cn[0].value) if cn else "", tuple(str(o.value) for o in orgs))


# --- the store -------------------------------------------------------------------------

class PKI:
    def __init__(self, pki_dir: Path, kubeconfig_dir: Path, renew_days: int = 90,
                 server: str = "https://127.0.0.1:6443", validity: dt.timedelta = dt.timedelta(days=LEAF_DAYS)) -> None:
        self.files = Files(pki_dir, kubeconfig_dir)
        self.dir = pki_dir
        self.validity = validity
        # a leaf is renewed within renew_days of its expiry, or a third of its validity when that is
        # shorter (a leaf valid for 30 minutes is renewed after 20), but never later than 10 minutes
        # before it expires: client-go re-reads certificate files every 5 minutes
        self.renew = max(min(dt.timedelta(days=renew_days), validity / 3), RENEW_MIN)
        self.server = server

    def crt(self, name: str) -> Path:
        return self.files.crt(name)

    def key(self, name: str) -> Path:
        return self.files.key(name)

    def read_cert(self, name: str) -> x509.Certificate | None:
        try:
            return x509.load_pem_x509_certificate(self.crt(name).read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            return None
        except PermissionError as e:
            raise K4sError(f"cannot read {self.crt(name)}: {e.strerror}", hint="run as root") from e

    def _read_key(self, name: str) -> ec.EllipticCurvePrivateKey | None:
        try:
            key = serialization.load_pem_private_key(self.key(name).read_bytes(), password=None)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            return None
        except PermissionError as e:
            raise K4sError(f"cannot read {self.key(name)}: {e.strerror}", hint="run as root") from e
        return key if isinstance(key, ec.EllipticCurvePrivateKey) else None

    def write(self, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        # Key first: a crash between the two leaves a cert whose key does not
        # match, which the next run detects and re-issues.
        write_atomic(self.key(name), key_pem(key), KEY_MODE)
        write_atomic(self.crt(name), cert_pem(cert), CERT_MODE)

    def load_ca(self, ca: CA) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        cert, key = self.read_cert(ca.name), self._read_key(ca.name)
        if cert is None or key is None or not _same_key(key, cert):
            raise K4sError(f"CA {self.crt(ca.name)} is missing, unreadable or does not match its key",
                           hint=f"restore it from a backup, or remove {self.dir} to start a new cluster identity")
        return key, cert

    def ensure_ca(self, ca: CA) -> Result:
        key = self._read_key(ca.name)
        if not self.crt(ca.name).exists() and not self.key(ca.name).exists():
            key, cert = issue_ca(ca)
            self.write(ca.name, key, cert)
            return Result(ca.name, "created")
        if key is not None and not self.crt(ca.name).exists():
            # a crash between writing the key and the certificate (key first, see _write):
            # the key is the CA's identity, so its certificate is made again from it
            cert = issue_ca(ca, key)[1]
            write_atomic(self.crt(ca.name), cert_pem(cert), CERT_MODE)
            return Result(ca.name, "recovered", "certificate re-made from its key")
        self.load_ca(ca)
        return Result(ca.name, "kept")

    def leaf_problems(self, leaf: Leaf, ca_cert: x509.Certificate) -> list[str]:
        cert, key = self.read_cert(leaf.name), self._read_key(leaf.name)
        if cert is None:
            return ["missing or unreadable certificate"]
        if key is None:
            return ["missing or unreadable key"]
        problems = []
        if not _same_key(key, cert):
            problems.append("key does not match certificate")
        if not _signed_by(cert, ca_cert):
            problems.append(f"not signed by {leaf.ca.name}")
        left = cert.not_valid_after_utc - _now()
        if left <= dt.timedelta(0):
            problems.append("expired")
        elif left <= self.renew:
            problems.append(f"expires in {_span(left)}")
        have, want = cert_sans(cert), leaf.sans()
        if have != want:
            diff = sorted(f"+{s}" for s in want - have) + sorted(f"-{s}" for s in have - want)
            problems.append(f"SANs changed ({' '.join(diff)})")
        if _subject(cert) != (leaf.common_name, leaf.organizations):
            problems.append("subject changed")
        return problems

    def ensure(self, ident: Identity) -> list[Result]:
        results = [self.ensure_ca(ca) for ca in CAS]
        results.append(self._client_ca_bundle())
        cas = {ca.name: self.load_ca(ca) for ca in CAS}
        for leaf in leaves(ident):
            ca_key, ca_cert = cas[leaf.ca.name]
            fresh = not self.crt(leaf.name).exists()
            problems = [] if fresh else self.leaf_problems(leaf, ca_cert)
            if fresh or problems:
                key, cert = issue_leaf(leaf, ca_key, ca_cert, self.validity / dt.timedelta(days=1))
                self.write(leaf.name, key, cert)
                results.append(Result(leaf.name, "created" if fresh else "renewed", "; ".join(problems)))
            else:
                results.append(Result(leaf.name, "kept"))
            if leaf.kubeconfig:
                self.write_kubeconfig(leaf, cas[CLUSTER_CA.name][1])
        results.append(self._ensure_service_account_keys())
        return results

    def _client_ca_bundle(self) -> Result:
        """What the apiserver trusts for client certificates: the cluster CA, and the operator's
        CA when one was seeded. The operator CA must be a CA certificate, nothing else."""
        bundle = self.crt(CLUSTER_CA.name).read_bytes()
        operator = self.crt(OPERATOR_CA)
        if operator.exists():
            try:
                cert = x509.load_pem_x509_certificate(operator.read_bytes())
                is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
            except (ValueError, x509.ExtensionNotFound, OSError):
                is_ca = False
            if not is_ca:
                raise K4sError(f"{operator} is not a CA certificate",
                               hint="seed the operator CA's certificate (k4s vm does), or remove it")
            bundle += cert_pem(cert)
        changed = write_atomic(self.crt(CLIENT_CA_BUNDLE), bundle, CERT_MODE)
        return Result(CLIENT_CA_BUNDLE, "created" if changed else "kept")

    def _ensure_service_account_keys(self) -> Result:
        key = self._read_key(SERVICE_ACCOUNT)
        pub = self.files.sa_pub
        if key is not None and pub.exists():
            return Result(SERVICE_ACCOUNT, "kept")
        key = key or new_key()
        write_atomic(self.files.sa_key, key_pem(key), KEY_MODE)
        write_atomic(pub, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo), CERT_MODE)
        return Result(SERVICE_ACCOUNT, "created")

    def write_kubeconfig(self, leaf: Leaf, ca_cert: x509.Certificate) -> None:
        """The admin's with the certificate and key inside (users copy it elsewhere); the
        components' naming the files, which client-go re-reads when they change: a renewed
        leaf reaches the controllers, the kubelet and kube-proxy without a restart."""
        assert leaf.kubeconfig
        if leaf.name == ADMIN:
            text = kubeconfig_text(leaf.kubeconfig, self.server, self.crt(leaf.name).read_bytes(),
                                   self.key(leaf.name).read_bytes(), cert_pem(ca_cert))
        else:
            text = kubeconfig_files(leaf.kubeconfig, self.server, self.crt(leaf.name), self.key(leaf.name),
                                    self.crt(CLUSTER_CA.name))
        write_atomic(self.files.kubeconfig(leaf.kubeconfig), text, KEY_MODE)

    def check(self, ident: Identity) -> list[Problem]:
        """Every certificate with its expiry and problems; CAs included."""
        out = []
        cas = {ca.name: self.read_cert(ca.name) for ca in CAS}
        for ca in CAS:
            cert = cas[ca.name]
            p = Problem(ca.name, cert.not_valid_after_utc if cert else None)
            if cert is None or self._read_key(ca.name) is None:
                p.problems.append("missing or unreadable")
            elif (left := cert.not_valid_after_utc - _now()) <= max(self.renew, CA_WARN):
                p.problems.append(f"CA expires in {_span(left)}; plan a CA rotation")
            out.append(p)
        for leaf in leaves(ident):
            cert = self.read_cert(leaf.name)
            ca_cert = cas[leaf.ca.name]
            p = Problem(leaf.name, cert.not_valid_after_utc if cert else None)
            p.problems = self.leaf_problems(leaf, ca_cert) if ca_cert else ["its CA is missing"]
            out.append(p)
        return out


def _span(d: dt.timedelta) -> str:
    """A time left, as a person reads it: 41 days, 7 hours, 12 minutes."""
    secs = max(0, int(d.total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= 2 * size or (unit == "minute" and secs >= size):
            return f"{secs // size} {unit}s"
    return f"{secs} seconds"


def expiries(store: PKI, ident: Identity) -> dict[str, float]:
    """notAfter of every CA and leaf that exists, as a Unix time: for the metrics and `k4s status`."""
    out = {}
    for name in [ca.name for ca in CAS] + [leaf.name for leaf in leaves(ident)]:
        cert = store.read_cert(name)
        if cert is not None:
            out[name] = cert.not_valid_after_utc.timestamp()
    return out


def pem_expiry(path: Path) -> float | None:
    """notAfter of the first certificate in a PEM file (a kubelet's rotated pair), or None."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()
    except (OSError, ValueError):
        return None


def kubeconfig_text(user: str, server: str, cert_pem_: bytes, key_pem_: bytes, ca_pem: bytes) -> str:
    """A kubeconfig for one client identity: its certificate and key, the CA it trusts."""
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return _kubeconfig(user, {"server": server, "certificate-authority-data": b64(ca_pem)},
                       {"client-certificate-data": b64(cert_pem_), "client-key-data": b64(key_pem_)})


def kubeconfig_files(user: str, server: str, cert: Path, key: Path, ca: Path) -> str:
    """A kubeconfig that names the certificate, key and CA files instead of holding them."""
    return _kubeconfig(user, {"server": server, "certificate-authority": str(ca)},
                       {"client-certificate": str(cert), "client-key": str(key)})


def _kubeconfig(user: str, cluster: dict[str, str], credentials: dict[str, str]) -> str:
    import yaml

    doc = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "k4s", "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "k4s", "context": {"cluster": "k4s", "user": user}}],
        "current-context": "k4s",
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def spki_hash(cert: x509.Certificate) -> str:
    """kubeadm's pin of a CA: sha256 of its DER SubjectPublicKeyInfo, as `sha256:<hex>`
    (--discovery-token-ca-cert-hash)."""
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def spki_hash_pem(pem: bytes) -> str:
    try:
        return spki_hash(x509.load_pem_x509_certificate(pem))
    except ValueError:
        raise K4sError("not a PEM certificate", hint="the CA data is corrupt") from None


def _same_key(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bool:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
        == cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def identity_for(cfg: Config) -> Identity:
    from k4s.cluster.netinfo import node_address

    _, node_ip = node_address(cfg.node_ip, cfg.interface)
    return Identity(cfg.node_name, node_ip, cfg.kubernetes_service_ip, cfg.cluster_domain, cfg.tls_san)


def for_config(cfg: Config) -> PKI:
    p = Paths.of(cfg.data_dir, cfg.run_dir)
    return PKI(p.pki, p.kubeconfigs, cfg.cert_renew_days, f"https://127.0.0.1:{cfg.apiserver_port}",
               dt.timedelta(seconds=cfg.cert_validity))
