"""An app's main flow, driven only through a client generated from the served OpenAPI
document (openapi-python-client, package `client`, made by run.py).

register -> verify (code from the server's log) -> login -> record -> history -> lookup.
Each step must return the documented success model; anything else fails the run.
"""

import json
import os
import sys
import time
import uuid

from client import AuthenticatedClient, Client
from client.api.auth import login, register, verify_otp
from client.api.social_battery import activity, get_battery, record
from client.api.users import lookup
from client.models import (
    ActivityPage,
    BatteryResponse,
    Channel,
    LoginJson,
    MessageResponse,
    PublicUser,
    RecordRequestType0,
    RecordRequestType0Type,
    RecordResponse,
    RegisterRequest,
    TokenResponse,
    VerifyOtpRequest,
)

BASE = os.environ["INTROGY_CONTRACT_BASE"]
LOG = os.environ["INTROGY_CONTRACT_LOG"]
PASSWORD = "generated client password"


def expect(value, model, step):
    if not isinstance(value, model):
        sys.exit(f"client flow: {step} returned {value!r}, not {model.__name__}")
    print(f"  {step}: ok")
    return value


def code_for(email):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with open(LOG) as log:
            for line in log:
                if email in line and '"subject"' in line:
                    return json.loads(line)["fields"]["subject"].split()[0]
        time.sleep(0.02)
    sys.exit(f"client flow: no code was mailed to {email}")


def signed_up(public, email, display_name):
    expect(
        register.sync(
            client=public,
            body=RegisterRequest(email=email, password=PASSWORD, display_name=display_name),
        ),
        MessageResponse,
        f"register {display_name}",
    )
    return expect(
        verify_otp.sync(client=public, body=VerifyOtpRequest(email=email, code=code_for(email))),
        TokenResponse,
        f"verify {display_name}",
    )


def main():
    public = Client(base_url=BASE, raise_on_unexpected_status=True)
    ada = f"ada-{uuid.uuid4().hex[:8]}@example.com"
    grace = f"grace-{uuid.uuid4().hex[:8]}@example.com"
    signed_up(public, ada, "Ada")
    grace_tokens = signed_up(public, grace, "Grace")

    tokens = expect(
        login.sync(client=public, body=LoginJson(email=ada, password=PASSWORD)),
        TokenResponse,
        "login",
    )
    me = AuthenticatedClient(base_url=BASE, token=tokens.access_token, raise_on_unexpected_status=True)

    before = expect(get_battery.sync("me", client=me), BatteryResponse, "battery")
    recorded = expect(
        record.sync(
            "me",
            client=me,
            body=RecordRequestType0(
                type_=RecordRequestType0Type.DEPLETION,
                name="Team lunch",
                energy_impact=30,
                interaction_type=Channel.IN_PERSON,
                people_count=6,
            ),
        ),
        RecordResponse,
        "record",
    )
    if recorded.battery.level != max(0, before.level - 30):
        sys.exit(f"client flow: level {before.level} - 30 gave {recorded.battery.level}")

    page = expect(activity.sync("me", client=me, limit=10), ActivityPage, "history")
    if [item.id for item in page.items] != [recorded.id] or page.summary.count != 1:
        sys.exit(f"client flow: history is {page.to_dict()}")

    found = expect(lookup.sync(client=me, email=grace.upper()), PublicUser, "lookup")
    if found.id != grace_tokens.user.id or found.display_name != "Grace":
        sys.exit(f"client flow: lookup found {found.to_dict()}")
    print("client flow: ok")


if __name__ == "__main__":
    main()
