"""``python -m app.users add NAME``: create an account for AUTH_MODE=password.

The password is asked for twice without echo (or read from standard input when it is not a
terminal, e.g. ``printf '%s' "$PASSWORD" | python -m app.users add alice``); it is never shown.
It opens the store at DATABASE_URL, migrated, and nothing of the web server: replies cut off by
a stopped app are the app's to mark, when it starts.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from app.settings import SettingsError, load_settings
from app.store import AccountError, Accounts, Store


def read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise AccountError("The two passwords differ; nothing was created.")
    return first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.users",
        description="Manage the accounts of AUTH_MODE=password (in DATABASE_URL).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="create an account; asks for its password")
    add.add_argument("name", help="3-50 letters, digits, '.', '_' or '-'")
    args = parser.parse_args(argv)
    try:
        store = Store(load_settings().database_url.get_secret_value())
        store.migrate()
        accounts = Accounts(store)
        user_id = accounts.signup(args.name, read_password())
    except SettingsError as err:
        print(err, file=sys.stderr)
        return 2
    except AccountError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Created account {args.name!r} (user {user_id}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
