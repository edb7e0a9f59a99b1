"""confluent-kafka's AdminClient against the credential store: as USER,
upsert SCRAM-SHA-256 and SCRAM-SHA-512 credentials for NEW_USER, describe
them, then log in as NEW_USER with each mechanism. Prints one JSON line last.

usage: sec_admin.py BOOTSTRAP CA USER PASSWORD NEW_USER NEW_PASSWORD [describe-only]
"""
import json, os, sys, time
from confluent_kafka import Producer
from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                   UserScramCredentialUpsertion)

bootstrap, ca, user, password, new_user, new_password = sys.argv[1:7]
describe_only = len(sys.argv) > 7


def conf(u, p, mech="SCRAM-SHA-512"):
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_SSL",
            "ssl.ca.location": ca, "sasl.mechanisms": mech, "sasl.username": u,
            "sasl.password": p}


out = {}


def step(what):
    sys.stderr.write("step: %s\n" % what)
    sys.stderr.flush()


a = AdminClient(conf(user, password))
if not describe_only:
    ups = [UserScramCredentialUpsertion(new_user, ScramCredentialInfo(m, 4096),
                                        new_password.encode())
           for m in (ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512)]
    step("alter")
    try:
        for f in a.alter_user_scram_credentials(ups).values():
            f.result()
        out["altered"] = True
    except Exception as e:
        out["altered"] = False
        out["alter_error"] = str(e)
if out.get("altered") is False:
    # Refused: done (librdkafka 2.16 has crashed in the error paths that follow).
    print(json.dumps(out))
    sys.stdout.flush()
    os._exit(0)
step("describe")
try:
    d = a.describe_user_scram_credentials([new_user])
    infos = d[new_user].result().scram_credential_infos if isinstance(d, dict) else \
        d.result()[new_user].scram_credential_infos
    out["described"] = sorted("%s/%d" % (i.mechanism.name, i.iterations) for i in infos)
except Exception as e:
    out["describe_error"] = str(e)
# Log in as the new user with each SCRAM mechanism: metadata answered.
logins = {}
keep = []  # no client is destroyed before os._exit (librdkafka may crash in teardown)
for mech in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
    step("login " + mech)
    errs = []
    p = Producer(dict(conf(new_user, new_password, mech),
                      **{"error_cb": lambda e, errs=errs: errs.append(str(e))}))
    keep.append(p)
    try:
        md = p.list_topics(timeout=8)
        logins[mech] = len(md.brokers) == 1 and not any("uthentication" in e for e in errs)
    except Exception:
        logins[mech] = False
logins_ok = logins
out["logins"] = logins_ok
print(json.dumps(out))
sys.stdout.flush()
os._exit(0)
