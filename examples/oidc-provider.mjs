// An OpenID Connect provider for `mcp-secrets serve --jwks-url …`, on the certified `oidc-provider` package
// (npm install oidc-provider@9): RFC 9068 JWT access tokens for the mcp-secrets endpoint a client names as
// its resource (RFC 8707), to clients registered on the fly (as the MCP SDKs do) with PKCE, and to one
// service by the client credentials grant.
//
//   ISSUER=http://127.0.0.1:9400 RESOURCE=http://127.0.0.1:8000/mcp SERVICE_SECRET_FILE=service.secret \
//     node oidc-provider.mjs
//
// For trying it out only: its sign-in page takes any login with any password (oidc-provider's development
// interactions), anyone who reaches it may register a client, and its grants live in memory.
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import Provider, { errors } from 'oidc-provider';

const { ISSUER, RESOURCE, SERVICE_SECRET_FILE, KEYS_FILE = 'oidc-keys.json' } = process.env;

// The signing key, kept across restarts: tokens signed by a key the provider no longer publishes are refused.
// To rotate, put a new key first (it signs) and keep the old one until its tokens have expired.
if (!existsSync(KEYS_FILE)) {
  const key = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  writeFileSync(KEYS_FILE, JSON.stringify({ keys: [{ ...key, kid: `key-${Date.now()}`, use: 'sig', alg: 'RS256' }] }),
    { mode: 0o600 });
}

const provider = new Provider(ISSUER, {
  jwks: JSON.parse(readFileSync(KEYS_FILE, 'utf8')),
  clients: [{
    client_id: 'service', client_secret: readFileSync(SERVICE_SECRET_FILE, 'utf8').trim(),
    grant_types: ['client_credentials'], response_types: [], redirect_uris: [], scope: 'secrets',
  }],
  scopes: ['openid', 'secrets', 'offline_access'],
  // The account id becomes the token's sub, which mcp-secrets takes as the username.
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    registration: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) => oneOf ?? RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (resource !== RESOURCE) throw new errors.InvalidTarget();
        // aud is the resource; the header's typ is at+jwt.
        return { scope: 'secrets', audience: RESOURCE, accessTokenFormat: 'jwt', accessTokenTTL: 3600 };
      },
    },
  },
  pkce: { required: () => true },
});

provider.listen(Number(new URL(ISSUER).port), new URL(ISSUER).hostname, () => console.log(`issuer ${ISSUER}`));
