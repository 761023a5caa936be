"""Config: layering, and one clear line for every kind of bad input."""

from __future__ import annotations

import os

import hypothesis
import pytest

from k4s import config
from k4s.errors import ConfigError
from tests.conftest import k4s_cmd


def write(tmp_path, text: str) -> str:
    p = tmp_path / "config.yaml"
    p.write_text(text)
    return str(p)


def test_layers_later_wins(tmp_path) -> None:
    f = write(tmp_path, "node-name: from-file\ncluster-domain: file.local\nlog-level: warn\n")
    cfg = config.load(f, cmdline="quiet k4s.node-name=from-cmdline k4s.tls-san=a.example,10.1.2.3 console=ttyS0",
                      overrides={"log-level": "debug"})
    assert cfg.node_name == "from-cmdline"
    assert cfg.cluster_domain == "file.local"
    assert cfg.log_level == "debug"
    assert cfg.tls_san == ("a.example", "10.1.2.3")
    assert cfg.cluster_dns == "10.43.0.10"  # derived from service-cidr
    assert cfg.sources["node-name"] == "kernel command line"
    assert cfg.sources["log-level"] == "flags"
    assert cfg.sources["cluster-domain"] == f"config file {f}"


def test_cmdline_bare_key_means_true_and_quotes() -> None:
    assert config.parse_cmdline('k4s.a "k4s.b=x y" k4s.c=1') == [("a", "true"), ("b", "x y"), ("c", "1")]


def test_file_lists_and_derived_dns(tmp_path) -> None:
    f = write(tmp_path, "service-cidr: 10.96.0.0/12\ntls-san: [k4s.example.com, 192.168.1.10]\n")
    cfg = config.load(f)
    assert cfg.cluster_dns == "10.96.0.10"
    assert cfg.kubernetes_service_ip == "10.96.0.1"


BAD = [
    # (file text or None, cmdline, overrides, expected fragment)
    ("nodename: x\n", None, None, "unknown key 'nodename' (hint: did you mean 'node-name'?)"),
    ("apiserver-port: lots\n", None, None, "key 'apiserver-port': 'lots' is not an integer"),
    ("apiserver-port: 70000\n", None, None, "key 'apiserver-port': 70000 is out of range"),
    ("cluster-cidr: 10.42.0.0/33\n", None, None, "key 'cluster-cidr': '10.42.0.0/33' is not a valid CIDR"),
    ("cluster-cidr: 10.42.0.1/16\n", None, None, "key 'cluster-cidr': '10.42.0.1/16' is not a valid CIDR"),
    ("service-cidr: 10.42.0.0/16\n", None, None, "cluster-cidr 10.42.0.0/16 overlaps service-cidr 10.42.0.0/16"),
    ("cluster-dns: 10.99.0.10\n", None, None, "cluster-dns 10.99.0.10 is not a usable address of service-cidr"),
    ("node-ip: 300.1.1.1\n", None, None, "key 'node-ip': '300.1.1.1' is not an IPv4 address"),
    ("node-name: Bad_Name\n", None, None, "key 'node-name': 'bad_name' is not a valid DNS name"),
    ("on-failure: explode\n", None, None, "key 'on-failure': 'explode' is not one of poweroff, reboot, halt"),
    ("tls-san: {a: b}\n", None, None, "key 'tls-san': {'a': 'b'} is not a list"),
    ("data-dir: relative/path\n", None, None, "key 'data-dir': 'relative/path' is not an absolute path"),
    ("- just\n- a list\n", None, None, "top level is a list, not a mapping"),
    ("node-name: [unclosed\n", None, None, "at line 2 column 1"),
    (None, "k4s.bogus=1", None, "kernel command line: unknown key 'bogus'"),
    (None, "k4s.ip=10.0.2.300/24", None, "kernel command line: key 'ip': '10.0.2.300/24' is neither 'dhcp' nor"),
    (None, "k4s.bin-dir=/tmp/evil", None, "kernel command line: key 'bin-dir' may not be set there"),
    (None, None, {"log-level": "loud"}, "flags: key 'log-level': 'loud' is not one of debug, info, warn, error"),
    (None, None, {"gateway": "10.0.2.2"}, "gateway is set but ip is dhcp"),
    (None, "k4s.component-processes=one", None,
     "key 'component-processes': 'one' is not one of shared, separate"),
]


@pytest.mark.parametrize("text,cmdline,overrides,expected", BAD)
def test_bad_input_is_one_clear_line(tmp_path, text, cmdline, overrides, expected) -> None:
    f = write(tmp_path, text or "")
    with pytest.raises(ConfigError) as e:
        config.load(f, cmdline=cmdline, overrides=overrides)
    line = e.value.render()
    assert expected in line
    assert "\n" not in line and "hint:" in line
    assert e.value.code == 2


@pytest.mark.parametrize("text,cmdline,overrides,expected", BAD[:4] + BAD[14:15] + BAD[17:18])
def test_cli_validate_exit_2_one_line(tmp_path, text, cmdline, overrides, expected) -> None:
    args = ["config", "validate"]
    if text is not None:
        args += ["--config", write(tmp_path, text)]
    for k, v in (overrides or {}).items():
        args += ["--set", f"{k}={v}"]
    r = k4s_cmd(*args, env={"K4S_CMDLINE": cmdline or "", "K4S_CONFIG": os.devnull} if text is None
                else {"K4S_CMDLINE": cmdline or ""})
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and lines[0].startswith("k4s config: error:")


def test_unreadable_and_missing_file(tmp_path) -> None:
    r = k4s_cmd("config", "validate", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "not found" in r.stderr
    r = k4s_cmd("config", "validate", "--config", str(tmp_path))
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_show_origin_names_layer(tmp_path) -> None:
    f = write(tmp_path, "cluster-domain: example.internal\n")
    r = k4s_cmd("config", "show", "--origin", "--config", f, "--set", "apiserver-port=7443",
                env={"K4S_CMDLINE": "k4s.node-name=n1"}, check=True)
    lines = {ln.split(":")[0]: ln for ln in r.stdout.splitlines()}
    assert "example.internal" in lines["cluster-domain"] and f"config file {f}" in lines["cluster-domain"]
    assert "7443" in lines["apiserver-port"] and "# flags" in lines["apiserver-port"]
    assert "n1" in lines["node-name"] and "# kernel command line" in lines["node-name"]


# --- hostile or odd input -------------------------------------------------------------------

@pytest.mark.parametrize("cmdline,expected", [
    # as lib/cmdline.c splits it: double quotes only; ' and \ are plain text
    ('k4s.a "k4s.b=x y" k4s.c=1', [("a", "true"), ("b", "x y"), ("c", "1")]),
    ("k4s.node-name=it's k4s.x=a\\b", [("node-name", "it's"), ("x", "a\\b")]),
    ('k4s.n="quoted value" k4s.m=a"b c"d', [("n", "quoted value"), ("m", 'a"b c"d')]),
    ('k4s.u="unbalanced rest of line', [("u", "unbalanced rest of line")]),
    ("BOOT_IMAGE=/vmlinuz k4s.a=1 -- k4s.b=2", [("a", "1")]),  # after --: init's arguments
    ("k4s.a=1\tk4s.b=2\n", [("a", "1"), ("b", "2")]),
])
def test_cmdline_is_split_as_the_kernel_splits_it(cmdline, expected) -> None:
    assert config.parse_cmdline(cmdline) == expected


@pytest.mark.parametrize("key", ["kube-apiserver-arg", "kubelet-arg", "bin-dir", "data-dir", "run-dir",
                                 "write-kubeconfig", "disable", "cluster-cidr"])
def test_cmdline_may_not_set_keys_that_weaken_the_node(key) -> None:
    with pytest.raises(ConfigError) as e:
        config.load(os.devnull, cmdline=f"quiet k4s.{key}=--anonymous-auth=true")
    assert f"key '{key}' may not be set there" in e.value.render() and "hint:" in e.value.render()
    assert key not in config.CMDLINE_KEYS


def test_a_quote_in_the_cmdline_is_a_clean_error_not_a_crash() -> None:
    with pytest.raises(ConfigError) as e:
        config.load(os.devnull, cmdline="k4s.node-name=it's")
    assert "is not a valid DNS name" in e.value.render()


@pytest.mark.parametrize("text,expected", [
    ("node-name: |\n  node-1\n", "'node-1\\n' is not a valid DNS name"),
    ("apiserver-port: 6443.9\n", "6443.9 is not an integer"),
    ("apiserver-port: true\n", "True is not an integer"),
    ("apiserver-port: " + "9" * 5000 + "\n", "a number too long to read"),
    ("node-name: a\nlog-level: warn\nnode-name: b\n", "key 'node-name' is set twice, at lines 1 and 3"),
    ('data-dir: "/x\\"\\nimports = [1]"\n', "has characters a k4s path may not hold"),
    ('kubelet-arg: ["--v=2\\n--x"]\n', "is not a --flag or --flag=value"),
])
def test_hostile_config_values_are_one_line(tmp_path, text, expected) -> None:
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text))
    line = e.value.render()
    assert expected in line and "\n" not in line and "hint:" in line, line


def test_list_items_keep_their_commas(tmp_path) -> None:
    f = write(tmp_path, 'kube-apiserver-arg: ["--feature-gates=A=true,B=false"]\n')
    assert config.load(f).kube_apiserver_arg == ("--feature-gates=A=true,B=false",)
    flow = config.load(os.devnull, overrides={"kube-apiserver-arg": '["--feature-gates=A=true,B=false", "--v=2"]'})
    assert flow.kube_apiserver_arg == ("--feature-gates=A=true,B=false", "--v=2")
    assert config.load(os.devnull, overrides={"tls-san": "a.example,b.example"}).tls_san == ("a.example", "b.example")


@pytest.mark.parametrize("value,ok", [("http://10.0.2.2:8080/", True), ("http://boot.example/k4s/v1/", True),
                                      ("file:///etc/", False), ("http://h/x", False), ("http://h/../etc/", False),
                                      ("http://h/a b/", False)])
def test_payload_url_from_the_command_line(value, ok) -> None:
    if ok:
        assert config.load(os.devnull, cmdline=f"k4s.payload={value}").payload == value
    else:
        with pytest.raises(ConfigError, match="is not a payload directory URL"):
            config.load(os.devnull, cmdline=f'"k4s.payload={value}"')


PUBLIC = "k4s.role=agent k4s.server=https://10.77.0.1:6443 k4s.ca-hash=sha256:" + "a" * 64
TOKEN = "k4s.token=abcdef.0123456789abcdef"
AGENT = f"{PUBLIC} {TOKEN}"


def join_file(tmp_path, text: str = AGENT) -> str:
    p = tmp_path / "join"
    p.write_text(text)
    return str(p)


def test_an_agent_join_from_token_create_loads(tmp_path) -> None:
    cfg = config.load(os.devnull, cmdline="k4s.node-name=w1", join_secret=join_file(tmp_path))
    assert (cfg.role, cfg.server, cfg.token, cfg.node_name) == ("agent", "https://10.77.0.1:6443",
                                                                "abcdef.0123456789abcdef", "w1")
    assert cfg.sources["token"] == f"join secret {tmp_path / 'join'}"
    # the public half on the command line, the token alone in the segment
    cfg = config.load(os.devnull, cmdline=PUBLIC, join_secret=join_file(tmp_path, TOKEN))
    assert (cfg.role, cfg.token) == ("agent", "abcdef.0123456789abcdef")


def test_a_token_on_the_command_line_is_refused_naming_the_segment() -> None:
    with pytest.raises(ConfigError) as e:
        config.load(os.devnull, cmdline=AGENT)
    line = e.value.render()
    assert "key 'token' is a secret" in line and "--segment" in line and "0123456789abcdef" not in line, line


def test_a_join_secret_may_set_only_join_keys(tmp_path) -> None:
    with pytest.raises(ConfigError, match="key 'data-dir' may not be set there"):
        config.load(os.devnull, join_secret=join_file(tmp_path, AGENT + " k4s.data-dir=/evil"))
    with pytest.raises(ConfigError, match="more than 4096 bytes"):
        config.load(os.devnull, join_secret=join_file(tmp_path, AGENT + " " * 5000))
    assert config.load(os.devnull, join_secret=str(tmp_path / "none")).token == ""  # no segment: no layer


@pytest.mark.parametrize("cmdline, message", [
    ("k4s.role=agent k4s.server=https://10.77.0.1:6443", "role agent needs token, ca-hash"),
    (AGENT.replace("https://", "http://"), "is not an apiserver URL"),
    (AGENT.replace("sha256:a", "sha1:a"), "is not a CA hash"),
    ("k4s.mgmt-interface=eth0", "needs a static ip"),
])
def test_join_keys_are_checked(tmp_path, cmdline: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(os.devnull, join_secret=join_file(tmp_path, cmdline))


def test_a_token_alone_is_refused_with_what_a_join_needs(tmp_path) -> None:
    with pytest.raises(ConfigError, match="a server that joins another needs server, ca-hash, certificate-key") as e:
        config.load(os.devnull, join_secret=join_file(tmp_path, TOKEN))
    assert "k4s.role=agent" in (e.value.hint or "")


CERT_KEY = "k4s.certificate-key=" + "0f" * 32
SERVER_JOIN = AGENT.replace("k4s.role=agent", "k4s.role=server") + " " + CERT_KEY


def test_a_server_joins_with_a_certificate_key_from_its_join_segment(tmp_path) -> None:
    cfg = config.load(os.devnull, join_secret=join_file(tmp_path, SERVER_JOIN))
    assert cfg.role == "server" and cfg.joins_control_plane and cfg.certificate_key == "0f" * 32
    assert not config.load(os.devnull).joins_control_plane


@pytest.mark.parametrize("words, message", [
    (AGENT + " " + CERT_KEY, "certificate-key is for a server that joins, not role agent"),
    (SERVER_JOIN.replace("0f" * 32, "0g" * 32), "is not a certificate key"),
    (SERVER_JOIN.replace(" " + CERT_KEY, ""), "needs certificate-key too"),
])
def test_a_server_join_is_checked_and_its_key_never_echoed(tmp_path, words: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        config.load(os.devnull, join_secret=join_file(tmp_path, words))
    assert "0g0g" not in str(e.value) + (e.value.hint or "")


def test_cluster_init_makes_the_first_server_elect_its_controllers_and_is_refused_on_a_worker(tmp_path) -> None:
    assert config.load(os.devnull, cmdline="k4s.cluster-init=1").leader_elect
    assert not config.load(os.devnull).leader_elect
    assert config.load(os.devnull, join_secret=join_file(tmp_path, SERVER_JOIN)).leader_elect  # a joiner always
    with pytest.raises(ConfigError, match="cluster-init is for the first server, not role agent") as e:
        config.load(os.devnull, cmdline="k4s.cluster-init=1", join_secret=join_file(tmp_path, AGENT))
    assert "k4s.cluster-init=1" in (e.value.hint or "")


def test_etcd_only_is_for_a_server_that_joins(tmp_path) -> None:
    cfg = config.load(os.devnull, cmdline="k4s.etcd-only=1", join_secret=join_file(tmp_path, SERVER_JOIN))
    assert cfg.etcd_only and cfg.joins_control_plane
    for words in ("", AGENT):  # a first server, a worker
        with pytest.raises(ConfigError, match="etcd-only is for a server that joins another") as e:
            config.load(os.devnull, cmdline="k4s.etcd-only=1", join_secret=join_file(tmp_path, words) if words else None)
        assert "token create --control-plane" in (e.value.hint or "")


def test_a_certificate_key_on_the_command_line_is_refused() -> None:
    with pytest.raises(ConfigError, match="certificate-key"):
        config.load(os.devnull, cmdline=CERT_KEY)


def test_a_malformed_token_is_not_echoed(tmp_path) -> None:
    with pytest.raises(ConfigError) as e:
        config.load(os.devnull, join_secret=join_file(tmp_path, AGENT.replace("abcdef.0123456789abcdef",
                                                                               "abcdef.0123456789ABCDEF")))
    assert "0123456789ABCDEF" not in str(e.value) + (e.value.hint or "")


# --- hostile YAML: aliases, and values too long to echo -------------------------------------

BOMB = '["a", &a ["x","x","x","x","x","x","x","x","x"], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], ' \
       '&c [*b,*b,*b,*b,*b,*b,*b,*b,*b], &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], [*d,*d,*d,*d,*d,*d,*d,*d,*d]]'


def test_a_yaml_alias_bomb_on_the_command_line_is_refused_at_once() -> None:
    import resource
    import time

    t0, rss0 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError) as e:
        config.load(os.devnull, cmdline=f"'k4s.dns={BOMB}'".replace("'", '"'))
    assert "alias" in e.value.render() and len(e.value.render()) < 400, e.value.render()[:500]
    assert time.monotonic() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 8 << 10  # KiB: a few MB at most


def test_a_yaml_alias_in_the_config_file_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="a YAML alias .* at line 2"):
        config.load(write(tmp_path, "tls-san: &s [a.example]\nkube-apiserver-arg: *s\n"))


@hypothesis.given(hypothesis.strategies.text(min_size=100, max_size=2000))
@hypothesis.settings(max_examples=50, deadline=None)
def test_an_error_quotes_a_long_value_cut_short(value: str) -> None:
    try:
        config.load(os.devnull, overrides={"node-name": value})
    except ConfigError as e:
        assert len(e.value.render() if hasattr(e, "value") else e.render()) < 600


def test_a_list_nested_a_thousand_deep_is_one_line() -> None:
    with pytest.raises(ConfigError, match="is not a YAML list"):
        config.load(os.devnull, cmdline="k4s.dns=" + "[" * 1000)
