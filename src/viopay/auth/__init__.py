"""Authentication: Bearer tokens (Keycloak or the embedded issuer), API clients, merchant sessions."""
