// Package access says who may do what on a kiln: it keeps the admin
// credential (created in the data directory on first start) and checks the
// credentials a request presents, for the embedded registry's writes and
// for the admin calls of the gRPC/REST API.
//
// Credentials are the distribution project's own: users in an htpasswd file
// (bcrypt hashes), checked by distribution's htpasswd access controller, sent
// as HTTP basic auth, which every registry client (crane, skopeo, cosign,
// containerd, docker) sends when challenged; or, with a client CA
// configured, a TLS client certificate that CA signed.
package access
