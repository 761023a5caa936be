"""One typed, validated Config from four layers, later wins:

    embedded defaults < config file (/etc/k4s/config.yaml) < kernel command line k4s.* < flags

Keys are spelled the same everywhere (kebab-case, like k3s's config.yaml):
`cluster-cidr: 10.42.0.0/16` in the file, `k4s.cluster-cidr=10.42.0.0/16` on
the kernel command line, `--set cluster-cidr=10.42.0.0/16` as a flag. Lists
are YAML lists in the file; elsewhere comma-separated, or a YAML flow list
when an item holds a comma: `--set 'kube-apiserver-arg=["--feature-gates=A=true,B=false"]'`.

The kernel command line is untrusted input (anyone who can edit a boot entry,
or answer a PXE request, writes it): it is parsed as the kernel parses it,
and may set only the keys marked `cmdline` below. Keys that weaken security
or point the node at other programs or paths come only from the config file
inside the image.

Every error names the key and the source it came from and is one line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from k4s import layout
from k4s.errors import ConfigError

DEFAULT_CONFIG_FILE = str(layout.CONFIG_FILE)
CMDLINE_PREFIX = "k4s."
PROC_CMDLINE = "/proc/cmdline"

# whole-value patterns: always used with fullmatch (a `$` would let a trailing newline through)
_HOSTNAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")
_IFNAME = re.compile(r"[A-Za-z0-9_.:-]{1,15}")
_SERIAL = re.compile(r"(ttyS|ttyAMA|hvc)[0-9]{1,3}")
_PATH = re.compile(r"/[A-Za-z0-9._+@:/-]*")
_SERVER_URL = re.compile(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?")
_DATA_DEVICE = re.compile(r"LABEL=[A-Za-z0-9_.-]{1,16}|/dev/[a-z][a-z0-9/_-]{0,63}")
_TOKEN = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")  # kubeadm's bootstrap token: <id>.<secret>
_CA_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_CERTIFICATE_KEY = re.compile(r"[0-9a-f]{64}")
_URL = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/([A-Za-z0-9._~-]+/)*")


class Invalid(ValueError):
    """A value does not fit its key; carries the hint shown to the user."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


# --- value parsers: text or YAML value -> typed value, or Invalid ---------------------------

SHOWN = 60  # characters of a bad value an error quotes: the message stays one short line


def shown(v: Any) -> str:
    """A value as an error quotes it: repr, cut to SHOWN characters (a 5000-character value is
    not echoed whole onto a console)."""
    r = repr(v) if not isinstance(v, list | tuple | dict) or len(v) < 64 else f"<a {type(v).__name__} of {len(v)}>"
    return r if len(r) <= SHOWN else r[:SHOWN - 3] + "..."


def _str(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise Invalid(f"{shown(v)} is not a string", "write a plain string")
    return str(v)


def _dns_name(v: Any) -> str:
    s = _str(v).lower()
    if not _HOSTNAME.fullmatch(s) or len(s) > 253:
        raise Invalid(f"{shown(s)} is not a valid DNS name", "use lower-case letters, digits, '-' and '.', e.g. node-1")
    return s


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def p(v: Any) -> Any:
        return "" if v in ("", None) else parse(v)

    return p


def _pattern(regex: re.Pattern[str], what: str, hint: str, secret: bool = False,
             lower: bool = False) -> Callable[[Any], str]:
    """A string that matches regex whole; a secret is never echoed back (the console is not a
    place for one)."""
    def p(v: Any) -> str:
        s = _str(v).lower() if lower else _str(v)
        if not regex.fullmatch(s):
            raise Invalid(f"{'the value' if secret else shown(s)} is not {what}", hint)
        return s

    return p


_ifname = _pattern(_IFNAME, "a network interface name", "e.g. eth0 or ens3")
_serial_port = _pattern(_SERIAL, "a serial port", "name a port under /dev, e.g. ttyS1 or hvc1")
_data_device = _pattern(_DATA_DEVICE, "a data disk", "write LABEL=K4SDATA (an ext4 label, up to 16 characters) "
                        "or a device path such as /dev/vdb")
_server_url = _pattern(_SERVER_URL, "an apiserver URL", "write https://HOST:6443, as `k4s token create` prints it")
_token = _pattern(_TOKEN, "a bootstrap token", "write <6 of [a-z0-9]>.<16 of [a-z0-9]>, as `k4s token create` "
                  "prints it", secret=True)
_certificate_key = _pattern(_CERTIFICATE_KEY, "a certificate key", "write 64 hex digits, as `k4s token create "
                            "--control-plane` prints it", secret=True, lower=True)
_ca_hash = _pattern(_CA_HASH, "a CA hash", "write sha256:<64 hex digits>, as the server's console or "
                    "`k4s token create` prints it", lower=True)


def _payload_url(v: Any) -> str:
    s = _str(v)
    if not _URL.fullmatch(s) or any(seg in (".", "..") for seg in s.split("/")[3:]):
        raise Invalid(f"{shown(s)} is not a payload directory URL", "write http://HOST[:PORT]/PATH/ (ending in /)")
    return s


def _ipv4(v: Any) -> str:
    s = _str(v)
    try:
        return str(ipaddress.IPv4Address(s))
    except ValueError:
        raise Invalid(f"{shown(s)} is not an IPv4 address", "write it like 10.0.2.15") from None


def _cidr(v: Any) -> str:
    s = _str(v)
    try:
        return str(ipaddress.IPv4Network(s, strict=True))
    except ValueError as e:
        raise Invalid(f"{shown(s)} is not a valid CIDR ({e})", "write a network like 10.42.0.0/16") from None


def _interface_address(v: Any) -> str:
    """`dhcp`, or a static address with prefix: 10.0.2.15/24."""
    s = _str(v)
    if s == "dhcp":
        return s
    try:
        return str(ipaddress.IPv4Interface(s))
    except ValueError:
        raise Invalid(f"{shown(s)} is neither 'dhcp' nor an address with prefix", "write dhcp or 10.0.2.15/24") from None


def _int_range(lo: int, hi: int) -> Callable[[Any], int]:
    def p(v: Any) -> int:
        hint = f"write a whole number from {lo} to {hi}"
        if isinstance(v, int) and not isinstance(v, bool):
            n = v
        elif isinstance(v, str) and re.fullmatch(r"[0-9]{1,10}", v.strip()):
            n = int(v)
        else:  # floats (6443.9), booleans, 5000-digit numbers, anything else
            raise Invalid(f"{shown(v)} is not an integer", hint)
        if not lo <= n <= hi:
            raise Invalid(f"{n} is out of range", f"write a number from {lo} to {hi}")
        return n

    return p


_DURATION = re.compile(r"([0-9]{1,6})([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(lo: int, hi: int) -> Callable[[Any], int]:
    """A duration as seconds, written 90s, 10m, 12h or 365d."""
    def p(v: Any) -> int:
        m = _DURATION.fullmatch(_str(v).strip())
        if not m:
            raise Invalid(f"{shown(v)} is not a duration", "write a number with a unit: 10m, 12h or 365d")
        n = int(m.group(1)) * _UNIT[m.group(2)]
        if not lo <= n <= hi:
            raise Invalid(f"{v} is out of range", f"write a duration from {lo // 60}m to {hi // 86400}d")
        return n

    return p


duration = _duration  # for applets that take a duration the same way


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise Invalid(f"{shown(v)} is not a boolean", "write true or false")


def _choice(*choices: str) -> Callable[[Any], str]:
    def p(v: Any) -> str:
        s = _str(v)
        if s not in choices:
            raise Invalid(f"{shown(s)} is not one of {', '.join(choices)}", f"write one of {', '.join(choices)}")
        return s

    return p


def _list_of(parse: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    def p(v: Any) -> tuple[Any, ...]:
        if isinstance(v, str) and v.lstrip().startswith("["):  # a YAML flow list keeps commas in items
            import yaml

            try:
                v = yaml.load(v, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass, no aliases
            except _Alias:
                raise Invalid("a YAML alias (*name) is not allowed", "write every item out") from None
            except (yaml.YAMLError, ValueError, RecursionError):  # RecursionError: [[[[... a thousand deep
                raise Invalid(f"{shown(v)} is not a YAML list", 'write ["a", "b,c"] or a,b') from None
            if not isinstance(v, list):
                raise Invalid(f"{shown(v)} is not a list", 'write ["a", "b,c"] or a,b')
        if isinstance(v, str):
            items: Iterable[Any] = [i for i in (x.strip() for x in v.split(",")) if i]
        elif isinstance(v, list | tuple):
            items = v
        elif v is None:
            items = []
        else:
            raise Invalid(f"{shown(v)} is not a list", "write a YAML list, or comma-separated values")
        return tuple(parse(i) for i in items)

    return p


def _san(v: Any) -> str:
    s = _str(v)
    try:
        return str(ipaddress.ip_address(s))
    except ValueError:
        return _dns_name(s)


def _flag(v: Any) -> str:
    s = _str(v)
    if not re.fullmatch(r"--[a-z0-9][a-z0-9-]*(=[^\n\r\0]*)?", s):
        raise Invalid(f"{shown(s)} is not a --flag or --flag=value", "write flags in full, e.g. --v=2")
    return s


def _abs_path(v: Any) -> str:
    s = _str(v)
    if not s.startswith("/"):
        raise Invalid(f"{shown(s)} is not an absolute path", "write a path starting with /")
    if not _PATH.fullmatch(s):  # paths go into other programs' config files (containerd's TOML)
        raise Invalid(f"{shown(s)} has characters a k4s path may not hold",
                      "use letters, digits and . _ + @ : / - only")
    return os.path.normpath(s)


# components whose command line a user can extend with `<component>-arg`, as in k3s
ARG_COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")


# --- the schema: one place for every key, its type, default and meaning ------------------

@dataclass(frozen=True)
class Key:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    cmdline: bool = False  # the kernel command line may set it: per-machine and harmless
    secret: bool = False  # a machine's secret: only its join segment (or a flag) sets it, never echoed


C = True  # marks the keys the kernel command line may set


def attr(name: str) -> str:
    return name.replace("-", "_")


def key(parse: Callable[[Any], Any], default: Any, help: str, cmdline: bool = False, secret: bool = False) -> Any:
    """A key, declared as a field of Config: its parser, default and help; `cmdline`: the kernel
    command line may set it (per-machine and harmless); `secret`: a machine's secret, which only
    its join segment (or a flag) sets and nothing echoes."""
    return field(default=default, metadata={"key": (parse, help, cmdline, secret)})


def component_args(component: str) -> Any:
    """`<component>-arg`: extra flags for an upstream component, as in k3s."""
    return key(_list_of(_flag), (), f"extra {component} flags, e.g. --v=2 (last one wins)")


@dataclass(frozen=True)
class Config:
    """The effective configuration. Built only by `load`; every value is validated. Each field is
    a key, declared once: its parser, default and help (`key`); `config show` and the kernel
    command line name it with dashes (node_name: node-name)."""

    node_name: str = key(_optional(_dns_name), "", "node name; empty means the host name", cmdline=C)
    node_ip: str = key(_optional(_ipv4), "", "the node's IPv4 address; empty means the address of `interface`", cmdline=C)
    interface: str = key(_optional(_ifname), "", "interface that carries node traffic; empty means the default route's", cmdline=C)
    ip: str = key(_interface_address, "dhcp", "boot-time address of `interface`: dhcp or CIDR (appliance only)", cmdline=C)
    gateway: str = key(_optional(_ipv4), "", "default gateway for a static `ip`", cmdline=C)
    dns: tuple[str, ...] = key(_list_of(_ipv4), (), "upstream DNS servers for a static `ip`", cmdline=C)
    mgmt_interface: str = key(_optional(_ifname), "", "a second interface, brought up by DHCP, for the operator's "
        "access (its default route and DNS); the node's traffic stays on `interface`", cmdline=C)
    hostname: str = key(_optional(_dns_name), "", "host name to set at boot; empty keeps the kernel's or uses node-name", cmdline=C)
    role: str = key(_choice("server", "agent"), "server", "server: the control plane and a node; agent: a worker "
        "that joins `server` with a bootstrap token (kubeadm's protocol)", cmdline=C)
    server: str = key(_optional(_server_url), "", "agent: the apiserver to join, https://HOST:PORT", cmdline=C)
    token: str = key(_optional(_token), "", "agent: a bootstrap token <id>.<secret> from `k4s token create`; "
        "single-use, short-lived, bound to one node name; only in the machine's join segment "
        f"({layout.JOIN_SECRET}), never on the command line every pod can read", secret=True)
    ca_hash: str = key(_optional(_ca_hash), "", "agent: sha256 of the cluster CA's public key, pinned before "
        "anything from the server is trusted", cmdline=C)
    cluster_init: bool = key(_bool, False, "the first server of a control plane that more servers will join (k3s's "
        "--cluster-init): its controller-manager and scheduler elect a leader, as every joining server's do, so that "
        "one of each is active; `k4s token create --control-plane` refuses a server without it", cmdline=C)
    etcd_only: bool = key(_bool, False, "a server that joins to run etcd alone (k3s's etcd-only server): a voting "
        "member, so that two full servers and it survive the loss of any one machine; no apiserver, controllers "
        "or node", cmdline=C)
    certificate_key: str = key(_optional(_certificate_key), "", "a server that joins `server`: the key that opens "
        "the cluster's shared CA keys (kubeadm's --certificate-key), from `k4s token create --control-plane`; "
        f"only in the machine's join segment ({layout.JOIN_SECRET})", secret=True)
    cluster_cidr: str = key(_cidr, "10.42.0.0/16", "pod network")
    service_cidr: str = key(_cidr, "10.43.0.0/16", "service ClusterIP network")
    cluster_dns: str = key(_optional(_ipv4), "", "CoreDNS ClusterIP; empty means the 10th address of service-cidr")
    cluster_domain: str = key(_dns_name, "cluster.local", "cluster DNS domain")
    data: str = key(_optional(_data_device), "", "a disk for the node's state (etcd, PKI, images, kubelet, volumes), "
        "mounted at data-dir: LABEL=K4SDATA or /dev/vdb; empty: the state lives in RAM", cmdline=C)
    data_format: bool = key(_bool, False, "format `data` as ext4 when it is blank (never a disk that holds anything); "
        "LABEL=NAME formats the only blank disk with that label", cmdline=C)
    data_encrypt: str = key(_choice("none", "tpm"), "none", "tpm: format `data` as LUKS2 with its key sealed to "
        "this machine's TPM and PCRs 7+15 (Secure Boot, the payload stage 1 measured): it opens only there and "
        "under that payload; a sealed disk is opened whatever this says", cmdline=C)
    data_dir: str = key(_abs_path, str(layout.DATA_DIR), "state: PKI, datastore, images, manifests")
    run_dir: str = key(_abs_path, str(layout.RUN_DIR), "sockets, logs, status")
    bin_dir: str = key(_abs_path, str(layout.LIBEXEC), "where the upstream binaries are")
    write_kubeconfig: str = key(_abs_path, str(layout.USER_KUBECONFIG), "a copy of the admin kubeconfig for users (0600)")
    tls_san: tuple[str, ...] = key(_list_of(_san), (), "extra names or addresses in the apiserver certificate", cmdline=C)
    apiserver_port: int = key(_int_range(1, 65535), 6443, "kube-apiserver secure port")
    component_gogc: int = key(_int_range(10, 1000), 100,
        "GOGC of the Go components once started (start-up runs at Go's default 100, or this if higher): "
        "lower trades idle CPU for RAM", cmdline=C)
    component_gomaxprocs: int = key(_int_range(0, 1024), 1,
        "CPUs each Go component runs on at once after its start-up (GOMAXPROCS; start-up uses them all): 1 "
        "spends a fifth less of an idle server's CPU, as Go's scheduler wakes less; 0: one per CPU, for a "
        "control plane serving many clients on a big machine", cmdline=C)
    component_processes: str = key(_choice("shared", "separate"), "shared",
        "shared: etcd, controller-manager and scheduler run in the apiserver's process, kube-proxy in "
        "the kubelet's (about 65 MiB less RAM); separate: one process each, with its own log", cmdline=C)
    zram: int = key(_int_range(0, 100), 50, "compressed swap in RAM (zram) for the node's own processes, as a "
        "percent of RAM it may take in (uncompressed); pods never swap; 0 turns it off (appliance only)", cmdline=C)
    zram_algorithm: str = key(_choice("zstd", "lzo-rle", "lz4"), "zstd", "how zram compresses: zstd keeps the most "
        "in the least RAM, lzo-rle and lz4 spend less CPU (a missing one falls back to the kernel's default)", cmdline=C)
    log_level: str = key(_choice("debug", "info", "warn", "error"), "info", "k4s log level", cmdline=C)
    profile: int = key(_int_range(0, 600), 0, "write a CPU profile of each Go component's first this many "
        "seconds to the log directory's profile/ (how a slow start is found; `go tool pprof` reads it); 0: off",
        cmdline=C)
    cert_renew_days: int = key(_int_range(1, 3650), 90, "re-issue leaf certificates expiring within this many days "
        "(or a third of their validity, if that is shorter), while the node runs")
    cert_validity: int = key(_duration(1800, 3650 * 86400), 365 * 86400, "how long a leaf certificate the node issues "
        "is valid: 365d, 12h, 30m")
    metrics_port: int = key(_int_range(0, 65535), 10270, "k4s's Prometheus endpoint on the node IP (HTTPS, client "
        "certificates of the cluster's client CAs, authorized by the apiserver); 0 turns it off")
    on_failure: str = key(_choice("poweroff", "reboot", "halt"), "poweroff", "what init does after a fatal error", cmdline=C)
    events: str = key(_optional(_serial_port), "", "a serial port that gets every event as a JSON line, for tools "
        "(k4s vm uses ttyS1); the console keeps the lines for people", cmdline=C)
    payload: str = key(_optional(_payload_url), "", "stage 1: where the signed stage 2 is (http://HOST/PATH/); "
        "what it fetches is verified against the key built into stage 1, so the command line may point it "
        "anywhere", cmdline=C)
    disable: tuple[str, ...] = key(_list_of(_choice("coredns", "kube-proxy", "flannel", "local-path", "manifests")), (),
        "bundled parts to leave out; without flannel, pods get a bridge on this node only; without local-path, "
        "no default StorageClass")
    etcd_arg: tuple[str, ...] = component_args("etcd")
    kube_apiserver_arg: tuple[str, ...] = component_args("kube-apiserver")
    kube_controller_manager_arg: tuple[str, ...] = component_args("kube-controller-manager")
    kube_scheduler_arg: tuple[str, ...] = component_args("kube-scheduler")
    kubelet_arg: tuple[str, ...] = component_args("kubelet")
    kube_proxy_arg: tuple[str, ...] = component_args("kube-proxy")
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def joins_control_plane(self) -> bool:
        """A server that joins another's control plane (k4s.cluster.copycerts), not the first one."""
        return self.role == "server" and bool(self.server)

    @property
    def leader_elect(self) -> bool:
        """The controller-manager and scheduler take turns through a Lease: on every server of a
        control plane that has (or will have) more than one."""
        return self.role == "server" and (self.cluster_init or self.joins_control_plane)

    @property
    def kubernetes_service_ip(self) -> str:
        """The first address of the service network: the `kubernetes` Service."""
        return str(ipaddress.IPv4Network(self.service_cidr)[1])

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in SCHEMA:
            v = getattr(self, attr(key.name))
            out[key.name] = list(v) if isinstance(v, tuple) else v
        return out


SCHEMA: tuple[Key, ...] = tuple(Key(f.name.replace("_", "-"), f.metadata["key"][0], f.default, *f.metadata["key"][1:])
                                for f in fields(Config) if "key" in f.metadata)
KEYS: dict[str, Key] = {k.name: k for k in SCHEMA}
CMDLINE_KEYS = tuple(k.name for k in SCHEMA if k.cmdline)
SECRET_KEYS = tuple(k.name for k in SCHEMA if k.secret)
JOIN_KEYS = CMDLINE_KEYS + SECRET_KEYS  # what a machine's join segment may set
HINT_JOIN_SEGMENT = ("hand it to the machine in its own join segment: `k4s token create --node NAME --segment FILE` "
                     "(then `k4s vm --join-secret FILE`, or `k4s netboot serve --kubeconfig` for PXE and stage 1)")



# --- the layers -------------------------------------------------------------------------

def kernel_params(text: str) -> list[tuple[str, str | None]]:
    """The command line split as the kernel splits it (lib/cmdline.c, next_arg): on
    whitespace outside double quotes; a leading quote of the word or of its value is
    dropped with the matching trailing one; there is no other quoting or escaping
    (a ' or a \\ is plain text). (param, value), value None without '='. A lone `--`
    ends the kernel's parameters: what follows is init's arguments."""
    out: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return out
        quoted = text[i] == '"'
        if quoted:
            i += 1
        start, equals, in_quote = i, -1, quoted
        while i < n and (in_quote or not text[i].isspace()):
            if equals < 0 and text[i] == "=":
                equals = i
            if text[i] == '"':
                in_quote = not in_quote
            i += 1
        word = text[start:i]
        if equals < 0:
            param, value = word, None
        else:
            param, value = text[start:equals], text[equals + 1:i]
            if value.startswith('"'):
                value = value[1:]
                if value.endswith('"'):
                    value = value[:-1]
        if quoted and word.endswith('"'):
            if value is None:
                param = param[:-1]
            elif value.endswith('"'):
                value = value[:-1]
        if param == "--" and value is None:
            return out
        out.append((param, value))


def parse_cmdline(text: str) -> list[tuple[str, str]]:
    """The k4s.* parameters of a kernel command line as (key, raw value) pairs; a bare
    `k4s.key` means `k4s.key=true`."""
    return [(p[len(CMDLINE_PREFIX):], "true" if v is None else v)
            for p, v in kernel_params(text) if p.startswith(CMDLINE_PREFIX)]


def read_file_layer(path: str, required: bool) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path}: not found", hint="check the path given to --config") from None
        return {}
    except (PermissionError, IsADirectoryError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path}: cannot read: {e}", hint="it must be a readable UTF-8 YAML file") from None
    import yaml  # here: stage 1 has no config file and carries no YAML

    try:
        data = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as e:
        raise ConfigError(f"config file {path}: key {shown(e.key)} is set twice, at lines {e.first} and {e.second}",
                          hint="keep one of them") from None
    except _Alias as e:
        raise ConfigError(f"config file {path}: a YAML alias (*name) at line {e.line}",
                          hint="write the value out: aliases are refused (one alias can expand to gigabytes)") from None
    except ValueError:  # PyYAML's int() of a number with thousands of digits
        raise ConfigError(f"config file {path}: a value is a number too long to read",
                          hint="numbers in the config are small whole numbers") from None
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1} column {mark.column + 1}"
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path}: {problem}{where}", hint="fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: top level is a {type(data).__name__}, not a mapping",
                          hint="write `key: value` lines, e.g. node-name: node-1")
    return data


class _DuplicateKey(Exception):
    def __init__(self, key: str, first: int, second: int) -> None:
        self.key, self.first, self.second = key, first, second


def _unique_mapping(loader: Any, node: Any, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for k, _ in node.value:
        key = loader.construct_object(k, deep=deep)
        if key in seen:
            raise _DuplicateKey(str(key), seen[key], k.start_mark.line + 1)
        seen[key] = k.start_mark.line + 1
    return loader.construct_mapping(node, deep)


class _Alias(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def _yaml_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that refuses a key set twice (PyYAML lets the last one win, silently) and
        any alias: a few hundred bytes of nested aliases expand to gigabytes ("billion laughs"),
        and nothing a k4s config says needs one."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise _Alias(self.peek_event().start_mark.line + 1)
            return super().compose_node(parent, index)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)
    return Loader


def _apply(values: dict[str, Any], sources: dict[str, str], layer: Iterable[tuple[Any, Any]], source: str,
           allowed: tuple[str, ...] | None = None) -> None:
    for raw_key, raw_value in layer:
        key = str(raw_key)
        if key not in KEYS:
            near = [k for k in KEYS if k.replace("-", "") == key.replace("-", "").replace("_", "")]
            hint = f"did you mean '{near[0]}'?" if near else "run `k4s config show` for the known keys"
            raise ConfigError(f"{source}: unknown key '{key[:64]}'", hint=hint)
        if allowed is not None and key in SECRET_KEYS and key not in allowed:
            raise ConfigError(f"{source}: key '{key}' is a secret, and every pod on the machine can read it there",
                              hint=HINT_JOIN_SEGMENT)
        if allowed is not None and key not in allowed:
            raise ConfigError(f"{source}: key '{key}' may not be set there (the command line is untrusted)",
                              hint=f"set it in the config file in the image ({DEFAULT_CONFIG_FILE}); the command "
                                   f"line may set {', '.join(allowed)}")
        try:
            values[key] = KEYS[key].parse(raw_value)
        except Invalid as e:
            raise ConfigError(f"{source}: key '{key}': {str(e)[:200]}", hint=e.hint) from None
        sources[key] = source


def _check(values: dict[str, Any], sources: dict[str, str]) -> None:
    """Rules that tie keys together."""
    cluster = ipaddress.IPv4Network(values["cluster-cidr"])
    service = ipaddress.IPv4Network(values["service-cidr"])

    def where(*keys: str) -> str:
        return ", ".join(f"'{k}' from {sources[k]}" for k in keys)

    if cluster.overlaps(service):
        raise ConfigError(f"cluster-cidr {cluster} overlaps service-cidr {service} ({where('cluster-cidr', 'service-cidr')})",
                          hint="pods and services need separate networks, e.g. 10.42.0.0/16 and 10.43.0.0/16")
    if cluster.prefixlen > 24:
        raise ConfigError(f"cluster-cidr {cluster} is smaller than a /24 ({where('cluster-cidr')})",
                          hint="the node takes a /24 for its pods; use a /24 or larger")
    if service.prefixlen > 28 or service.prefixlen < 12:
        raise ConfigError(f"service-cidr {service} must be between /12 and /28 ({where('service-cidr')})",
                          hint="use something like 10.43.0.0/16")
    if values["cluster-dns"]:
        dns = ipaddress.IPv4Address(values["cluster-dns"])
        if dns not in service or dns in (service.network_address, service.broadcast_address, service[1]):
            raise ConfigError(f"cluster-dns {dns} is not a usable address of service-cidr {service} ({where('cluster-dns', 'service-cidr')})",
                              hint=f"pick an address inside {service} other than {service[1]}")
    else:
        values["cluster-dns"] = str(service[10])
    join = ("server", "token", "ca-hash")
    if values["role"] == "agent":
        missing = [k for k in join if not values[k]]
        if missing:
            raise ConfigError(f"role agent needs {', '.join(missing)} (role from {sources['role']})",
                              hint="boot with the line `k4s token create` prints on the operator's host")
        if values["cluster-init"]:
            raise ConfigError(f"cluster-init is for the first server, not role agent ({where('cluster-init')})",
                              hint="drop it from the worker; boot the first server with k4s.cluster-init=1")
        if values["certificate-key"]:
            raise ConfigError(f"certificate-key is for a server that joins, not role agent ({where('certificate-key')})",
                              hint="a worker holds no CA key: drop it, or boot this machine with k4s.role=server")
    elif any(values[k] for k in (*join, "certificate-key")):
        # a server that joins another: all four, as `k4s token create --control-plane` writes them
        missing = [k for k in (*join, "certificate-key") if not values[k]]
        if missing:
            given = [k for k in (*join, "certificate-key") if values[k]]
            raise ConfigError(f"a server that joins another needs {', '.join(missing)} too ({where(*given)})",
                              hint="boot it with the join `k4s token create --control-plane` writes; a worker "
                                   "needs k4s.role=agent; a first server none of them")
    if values["etcd-only"] and not (values["role"] == "server" and values["server"]):
        raise ConfigError(f"etcd-only is for a server that joins another ({where('etcd-only')})",
                          hint="boot it with a join from `k4s token create --control-plane`; the first server "
                               "runs the whole control plane")
    if values["mgmt-interface"] and values["mgmt-interface"] == values["interface"]:
        raise ConfigError(f"mgmt-interface is the node interface ({where('mgmt-interface', 'interface')})",
                          hint="name a second interface, or drop mgmt-interface")
    if values["mgmt-interface"] and (values["ip"] == "dhcp" or not values["interface"]):
        raise ConfigError(f"with mgmt-interface, the node interface needs a static ip ({where('mgmt-interface', 'ip')})",
                          hint="e.g. k4s.interface=eth1 k4s.ip=10.77.0.1/24 k4s.mgmt-interface=eth0")
    if values["data-encrypt"] != "none" and not values["data-format"]:
        raise ConfigError(f"data-encrypt applies when a blank disk is formatted ({where('data-encrypt')})",
                          hint="add k4s.data-format=1; a disk sealed before opens without it")
    if values["data-format"] and not values["data"]:
        raise ConfigError(f"data-format is set but no data disk is named ({where('data-format')})",
                          hint="add k4s.data=LABEL=K4SDATA (or a device such as /dev/vdb)")
    if values["ip"] == "dhcp" and values["gateway"]:
        raise ConfigError(f"gateway is set but ip is dhcp ({where('gateway', 'ip')})",
                          hint="set a static ip like 10.0.2.15/24 or drop the gateway")


def read_join_secret(path: str) -> str:
    """A machine's join segment, written like a command line (k4s.token=... k4s.server=...);
    "" when there is none. Bounded: it is a few hundred bytes."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_JOIN_SECRET + 1)
    except FileNotFoundError:
        return ""
    except OSError as e:
        raise ConfigError(f"join secret {path}: cannot read: {e.strerror}", hint="it must be a readable file") from None
    if len(raw) > MAX_JOIN_SECRET:
        raise ConfigError(f"join secret {path}: more than {MAX_JOIN_SECRET} bytes",
                          hint="it holds a few k4s.key=value words; make it with `k4s token create --segment`")
    return raw.decode("utf-8", errors="replace")


MAX_JOIN_SECRET = 4096


def check_join_words(text: str, allowed: tuple[str, ...] = JOIN_KEYS) -> None:
    """A join secret's words, checked as `load` will read them (only `allowed` keys, valid values)."""
    if len(text.encode()) > MAX_JOIN_SECRET:
        raise ConfigError(f"a join secret of more than {MAX_JOIN_SECRET} bytes", hint="it holds a few k4s.key=value words")
    values: dict[str, Any] = {}
    _apply(values, {}, parse_cmdline(text), "join secret", allowed=allowed)


def load(
    config_file: str | None = None,
    cmdline: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    join_secret: str | None = None,
) -> Config:
    """Build the Config.

    config_file: None means DEFAULT_CONFIG_FILE if present; an explicit path must exist.
    cmdline: the kernel command line text; None means no command-line layer.
    overrides: explicit flags, by key name.
    join_secret: the path of a machine's join segment (layout.JOIN_SECRET on the appliance),
    read if it exists: k4s.key=value words that may set the join keys and the secret ones.
    """
    values: dict[str, Any] = {k.name: k.default for k in SCHEMA}
    sources: dict[str, str] = {k.name: "default" for k in SCHEMA}
    path = config_file or os.environ.get("K4S_CONFIG") or DEFAULT_CONFIG_FILE
    required = config_file is not None or "K4S_CONFIG" in os.environ
    _apply(values, sources, read_file_layer(path, required).items(), f"config file {path}")
    if join_secret is not None and (text := read_join_secret(join_secret)):
        _apply(values, sources, parse_cmdline(text), f"join secret {join_secret}", allowed=JOIN_KEYS)
    if cmdline is not None:
        _apply(values, sources, parse_cmdline(cmdline), "kernel command line", allowed=CMDLINE_KEYS)
    if overrides:
        _apply(values, sources, overrides.items(), "flags")
    _check(values, sources)
    if not values["node-name"]:
        import socket

        try:
            values["node-name"] = _dns_name(values["hostname"] or socket.gethostname())
        except Invalid:
            values["node-name"] = "k4s"
    return Config(**{attr(k): v for k, v in values.items()}, sources=dict(sources))


def parse_set(pairs: Iterable[str]) -> dict[str, str]:
    """`--set key=value` flags into a mapping (later ones win)."""
    out: dict[str, str] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep:
            raise ConfigError(f"flags: --set {p!r} has no '='", hint="write --set key=value")
        out[key] = value
    return out


def read_proc_cmdline() -> str:
    try:
        with open(PROC_CMDLINE, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def load_for_applet(config_file: str | None, cmdline: str | None, set_: Iterable[str]) -> Config:
    """What an applet's --config, --cmdline and --set flags mean: /proc/cmdline unless given."""
    return load(config_file=config_file, cmdline=read_proc_cmdline() if cmdline is None else cmdline,
                overrides=parse_set(set_))


def replace(cfg: Config, **changes: Any) -> Config:
    return dataclasses.replace(cfg, **changes)
