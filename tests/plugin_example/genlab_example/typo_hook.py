"""A stand-in plugin with a misspelled hook name (pluggy's check_pending would reject it)."""

import genlab


@genlab.hookimpl
def register_modles(register):  # sic
    pass
