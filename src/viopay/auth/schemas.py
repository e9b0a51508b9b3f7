from __future__ import annotations

from pydantic import BaseModel, Field


class ClientCredentials(BaseModel):
    client_id: str = Field(min_length=1, max_length=128)
    client_secret: str = Field(min_length=1, max_length=255)


class AccessToken(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int


class SessionInitiate(BaseModel):
    merchant_id: str = Field(min_length=1, max_length=128)


class SessionOut(BaseModel):
    session_id: str
    merchant_id: str
    role: str
    expires_at: str


class ClientIn(BaseModel):
    merchant_id: str | None = Field(default=None, max_length=64)
    role: str | None = Field(default=None, pattern=r"^(owner|admin|staff)$")
    admin: bool = False


class ClientOut(BaseModel):
    client_id: str
    client_secret: str
    merchant_id: str | None
    role: str | None
    admin: bool
