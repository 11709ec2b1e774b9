# Issue 14 item 8 at the application: a TLS link that does not verify the broker
# (link.insecure) or cannot (no link.ca) is reported at boot as an error line and in
# status; a verified one is not. The App is built as the gateway builds it (config
# validated and checked, then App(cfg)); nothing connects (the loop is not run).
import os

from test_cloud_zero_export import KEY_HEX, Site, _app

TMP = "/tmp/edgegw-test-link-tls-boot"


def _boot(link_cfg):
    try:
        os.mkdir(TMP)
    except OSError:
        pass
    old = os.getcwd()
    os.chdir(TMP)  # the Link keeps its ring and seq files in the gateway's directory
    try:
        a, lk = _app(Site(pv_w=0), TMP, dict(link_cfg, host="127.0.0.1", key=KEY_HEX))
    finally:
        os.chdir(old)
    assert lk is not None, a.errors
    st = a.status(False)
    return st["link"]["tls"], [e[1] for e in st["errors"]]


def test_insecure_tls_is_reported_at_boot_and_in_status():
    mode, errs = _boot({"tls": True, "insecure": True})
    assert mode == "INSECURE"
    assert [e for e in errs if e.startswith("link: TLS without verifying the broker")], errs


def test_tls_without_ca_is_reported_at_boot():
    mode, errs = _boot({"tls": True})
    assert mode == "no CA"
    assert [e for e in errs if e.startswith("link: TLS: no CA file")], errs


def test_verified_and_plain_links_say_nothing():
    for cfg, want in (({"tls": True, "ca": "ca.der"}, "verified"), ({}, "off")):
        mode, errs = _boot(cfg)
        assert mode == want and not [e for e in errs if "TLS" in e], errs
