"""Response schemas of the statements API (documents are returned exactly as signed)."""
from __future__ import annotations

from marshmallow import Schema, fields


class SignatureSchema(Schema):
    alg = fields.String(required=True, metadata={"example": "EdDSA"})
    kid = fields.String(required=True, metadata={"description": "Key id in /.well-known/jwks.json"})
    value = fields.String(required=True, metadata={
        "description": "base64url Ed25519 signature over the canonical JSON of `document` "
                       "(keys sorted, no whitespace, UTF-8)."})


class SignedStatementSchema(Schema):
    document = fields.Dict(required=True, metadata={
        "description": "The statement: every field of DESIGN.md's statement table, money in "
                       "integer cents, terms as decimal strings."})
    digest = fields.String(required=True, metadata={"description": "SHA-256 hex of the canonical document"})
    signature = fields.Nested(SignatureSchema, required=True)


class StatementSummarySchema(Schema):
    period = fields.String(required=True)
    net_cents = fields.Integer(required=True)
    digest = fields.String(required=True)


class StatementListSchema(Schema):
    statements = fields.List(fields.Nested(StatementSummarySchema), required=True)


class JwksSchema(Schema):
    keys = fields.List(fields.Dict(), required=True)
