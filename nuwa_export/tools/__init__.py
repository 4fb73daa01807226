"""The console verbs, one module each (``nuwa-run`` is :mod:`.run`, ...): parse the arguments,
call the library, print. Nothing imports them."""
