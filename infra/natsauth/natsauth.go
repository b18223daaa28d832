// Package natsauth guards the embedded NATS server: every connection
// presents credentials, and an agent's credentials reach only its own
// server's subjects.
//
// Operators, the NATS CLI and the process itself use a user and password
// (the password lives in the data directory). An agent uses a .creds file
// in the standard form (a user JWT and its nkey seed): the JWT, signed by
// an account key that also lives in the data directory, names the agent's
// permissions; the agent presents it as its token and proves it holds the
// seed by signing the server's nonce with it. (A server outside operator
// mode discards a JWT sent as such, hence the token.)
package natsauth

import (
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/orchestra-fleet/orchestra/events"
	"github.com/orchestra-fleet/orchestra/infra/files"
)

// Files in the data directory, 0600.
const (
	AccountFile  = "nats-account.nk" // the seed that signs agents' credentials
	PasswordFile = "nats.password"   // the password of User
)

// User is the name operators, the NATS CLI and the process connect as,
// with every permission.
const User = "orchestra"

// Authority issues credentials and checks them. It implements
// server.Authentication.
type Authority struct {
	account    nkeys.KeyPair
	accountPub string
	password   string
}

var _ server.Authentication = (*Authority)(nil)

// LoadOrCreate reads the account seed and the password from dir, creating
// what is missing.
func LoadOrCreate(dir string) (*Authority, error) {
	seed, err := readOrCreate(filepath.Join(dir, AccountFile), func() ([]byte, error) {
		kp, err := nkeys.CreateAccount()
		if err != nil {
			return nil, err
		}
		return kp.Seed()
	})
	if err != nil {
		return nil, err
	}
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		return nil, fmt.Errorf("nats account key %s: %w", AccountFile, err)
	}
	pub, err := kp.PublicKey()
	if err != nil || !nkeys.IsValidPublicAccountKey(pub) {
		return nil, fmt.Errorf("nats account key %s: not an account seed", AccountFile)
	}
	password, err := readOrCreate(filepath.Join(dir, PasswordFile), func() ([]byte, error) {
		secret := make([]byte, 32)
		if _, err := rand.Read(secret); err != nil {
			return nil, err
		}
		return []byte(base64.RawURLEncoding.EncodeToString(secret)), nil
	})
	if err != nil {
		return nil, err
	}
	return &Authority{account: kp, accountPub: pub, password: string(password)}, nil
}

// readOrCreate reads a secret file, or writes what create makes (0600).
func readOrCreate(path string, create func() ([]byte, error)) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		return bytes.TrimSpace(data), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("nats credentials: %w", err)
	}
	if data, err = create(); err != nil {
		return nil, fmt.Errorf("nats credentials %s: %w", path, err)
	}
	if err := files.WriteAtomic(path, append(data, '\n'), 0o600); err != nil {
		return nil, fmt.Errorf("nats credentials: %w", err)
	}
	return data, nil
}

// Internal is the option the process's own connections authenticate with.
func (a *Authority) Internal() nats.Option { return nats.UserInfo(User, a.password) }

// Check implements server.Authentication.
func (a *Authority) Check(c server.ClientAuthentication) bool {
	opts := c.GetOpts()
	if opts.Nkey == "" {
		ok := opts.Username == User && subtle.ConstantTimeCompare([]byte(opts.Password), []byte(a.password)) == 1
		if ok {
			c.RegisterUser(&server.User{Username: User})
		}
		return ok
	}
	uc, err := jwt.DecodeUserClaims(opts.Token)
	if err != nil || uc.Issuer != a.accountPub || uc.Subject != opts.Nkey || uc.Expires != 0 && time.Now().Unix() > uc.Expires {
		return false
	}
	sig, err := base64.RawURLEncoding.DecodeString(opts.Sig)
	if err != nil {
		if sig, err = base64.StdEncoding.DecodeString(opts.Sig); err != nil {
			return false
		}
	}
	user, err := nkeys.FromPublicKey(opts.Nkey)
	if err != nil || user.Verify(c.GetNonce(), sig) != nil {
		return false
	}
	p := uc.Permissions
	c.RegisterUser(&server.User{Username: uc.Name, Permissions: &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: p.Pub.Allow},
		Subscribe: &server.SubjectPermission{Allow: p.Sub.Allow},
	}})
	return true
}

// AgentOptions are the connection options of an agent: its credentials
// from a .creds file, and the inbox its credentials allow.
func AgentOptions(server, credsFile string) ([]nats.Option, error) {
	data, err := os.ReadFile(credsFile)
	if err != nil {
		return nil, fmt.Errorf("--creds: %w", err)
	}
	token, err := jwt.ParseDecoratedJWT(data)
	if err != nil {
		return nil, fmt.Errorf("--creds %s: %w", credsFile, err)
	}
	kp, err := jwt.ParseDecoratedNKey(data)
	if err != nil {
		return nil, fmt.Errorf("--creds %s: %w", credsFile, err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("--creds %s: %w", credsFile, err)
	}
	tok, err := events.Token(server)
	if err != nil {
		return nil, fmt.Errorf("--server: %w", err)
	}
	if uc, err := jwt.DecodeUserClaims(token); err != nil || uc.Name != "agent "+server {
		name := "?"
		if uc != nil {
			name = uc.Name
		}
		return nil, fmt.Errorf("--creds %s: these credentials are for %q, not the agent of %s", credsFile, name, server)
	}
	return []nats.Option{nats.Token(token), nats.Nkey(pub, kp.Sign), nats.CustomInboxPrefix(AgentInbox(tok))}, nil
}

// Agent issues the credentials of server's agent: it may take plans only
// from the server's own queue, publish results only about the server, and
// ask only for the server's sync.
func (a *Authority) Agent(server string) ([]byte, error) {
	tok, err := events.Token(server)
	if err != nil {
		return nil, err
	}
	return a.issue("agent "+server, AgentPermissions(tok))
}

// AgentInbox is the inbox prefix an agent's connection must use: the only
// replies its credentials let it receive.
func AgentInbox(serverToken string) string { return "_INBOX_" + serverToken }

// AgentSubject is where the agent of a server asks for a sync (".sync",
// a request) and is told to ask for one (".notify").
func AgentSubject(serverToken, what string) string {
	return "orchestra.agent." + serverToken + "." + what
}

// AgentPermissions are the subjects an agent of the server with token tok
// may use.
func AgentPermissions(tok string) jwt.Permissions {
	consumer := "exec-" + tok
	var p jwt.Permissions
	// No CONSUMER.CREATE: orchestra up makes the agent's consumer, so the
	// agent cannot change its delivery or acknowledgement settings.
	p.Pub.Allow.Add(
		"$JS.API.CONSUMER.INFO."+events.StreamExec+"."+consumer,
		"$JS.API.CONSUMER.MSG.NEXT."+events.StreamExec+"."+consumer,
		"$JS.ACK."+events.StreamExec+"."+consumer+".>",
		"orchestra.res."+tok+".*.ScriptStarted",
		"orchestra.res."+tok+".*.ScriptOutput",
		"orchestra.res."+tok+".*.ScriptFinished",
		"$JS.API.DIRECT.GET."+events.StreamResults+".orchestra.res."+tok+".>",
		AgentSubject(tok, "sync"),
	)
	p.Sub.Allow.Add(AgentInbox(tok)+".>", AgentSubject(tok, "notify"))
	return p
}

func (a *Authority) issue(name string, perms jwt.Permissions) ([]byte, error) {
	user, err := nkeys.CreateUser()
	if err != nil {
		return nil, err
	}
	pub, err := user.PublicKey()
	if err != nil {
		return nil, err
	}
	seed, err := user.Seed()
	if err != nil {
		return nil, err
	}
	uc := jwt.NewUserClaims(pub)
	uc.Name = strings.ToValidUTF8(name, "?")
	uc.Permissions = perms
	token, err := uc.Encode(a.account)
	if err != nil {
		return nil, fmt.Errorf("sign credentials: %w", err)
	}
	return jwt.FormatUserConfig(token, seed)
}
