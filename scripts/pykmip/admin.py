"""The PyKMIP administrator's side of the end-to-end tests: PyKMIP's own client acting on a key.

Usage: admin.py HOST PORT CA CERT KEY (revoke|state) UID
  revoke  takes the key out of use (Revoke, cessation of operation: the key becomes Deactivated)
  state   prints the key's state
PyKMIP cannot reactivate a key; its administrator restores the key from a backup instead.
"""
import sys

from kmip.core import enums
from kmip.pie.client import ProxyKmipClient


def main():
    host, port, ca, cert, key, command, uid = sys.argv[1:8]
    client = ProxyKmipClient(
        hostname=host, port=int(port), cert=cert, key=key, ca=ca, kmip_version=enums.KMIPVersion.KMIP_1_2
    )
    with client:
        if command == "revoke":
            client.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
        state = client.get_attributes(uid, ["State"])[1][0].attribute_value.value
        print(state.name)


if __name__ == "__main__":
    main()
