"""PyKMIP's client against a KMIP server: the operations a KMIP client commonly uses.

Usage: client_check.py HOST PORT CA CERT KEY VERSION   (VERSION: 1.2 or 1.4)
Exits 0 when every step behaves as KMIP says; prints each step.
"""
import sys

from kmip.core import enums
from kmip.pie import objects
from kmip.pie.client import ProxyKmipClient


def main():
    host, port, ca, cert, key, version = sys.argv[1:7]
    kmip_version = {"1.2": enums.KMIPVersion.KMIP_1_2, "1.4": enums.KMIPVersion.KMIP_1_4}[version]
    client = ProxyKmipClient(hostname=host, port=int(port), cert=cert, key=key, ca=ca, kmip_version=kmip_version)
    with client:
        uid = client.create(enums.CryptographicAlgorithm.AES, 256, name="pykmip-" + version)
        print("create", uid)
        client.activate(uid)
        print("activate")
        key_obj = client.get(uid)
        assert len(key_obj.value) == 32, key_obj
        print("get", type(key_obj).__name__)
        names = [a.attribute_name.value for a in client.get_attributes(uid)[1]]
        assert "State" in names and "Cryptographic Algorithm" in names, names
        print("get_attributes", len(names))
        state = client.get_attributes(uid, ["State"])[1][0].attribute_value.value
        assert state == enums.State.ACTIVE, state
        found = client.locate(attributes=[])
        assert uid in found, found
        print("locate", len(found))
        registered = client.register(
            objects.SymmetricKey(enums.CryptographicAlgorithm.AES, 128, b"\x01" * 16, name="registered-" + version)
        )
        print("register", registered)
        got = client.get(registered)
        assert got.value == b"\x01" * 16
        client.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
        state = client.get_attributes(uid, ["State"])[1][0].attribute_value.value
        assert state == enums.State.DEACTIVATED, state
        print("revoke")
        client.destroy(uid)
        client.destroy(registered)
        print("destroy")
        try:
            client.get(uid)
        except Exception as e:  # a destroyed key's material is gone
            print("get after destroy refused:", type(e).__name__)
        else:
            raise AssertionError("a destroyed key was returned")
    print("OK")


if __name__ == "__main__":
    main()
