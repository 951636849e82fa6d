"""Sign-in with the organisation's identity provider (issue 18): bearer JWTs validated against
the provider's keys (``jwks``, ``oidc``), their groups mapped to roles and model scopes
(``mapping``), beside modelreg's own tokens (``signin``); and signing in through the
provider's pages, the UI's code flow and what ``modelreg login`` needs (``flows``)."""
