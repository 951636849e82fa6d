"""Refused requests, recorded for auditors outside the event log (issue 18): the in-process
recorder the HTTP error handlers feed (``recorder``), the ``denials`` table it is written to
(``table``), and the loop that writes and prunes it (``flusher``)."""
