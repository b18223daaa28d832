// Package secrets seals resource secrets for the event log with AES-256-GCM
// under a key kept outside the log, in a file of the data dir readable only
// by its owner.
package secrets

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/orchestra-fleet/orchestra/infra/files"
	"github.com/orchestra-fleet/orchestra/services"
)

// prefix marks a sealed value and the scheme that sealed it.
const prefix = "sealed:v1:"

// Sealer implements services.Sealer.
type Sealer struct {
	aead cipher.AEAD
}

var _ services.Sealer = (*Sealer)(nil)

// New returns a sealer using a 32-byte key.
func New(key []byte) (*Sealer, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("secrets: the key is %d bytes; it must be 32", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// LoadOrCreate reads the hex key at path, creating it (mode 0600, 32 random
// bytes) when it does not exist. A key file others can read is refused.
func LoadOrCreate(path string) (*Sealer, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		err := files.WriteNew(path, []byte(hex.EncodeToString(key)+"\n"), 0o600)
		if err == nil {
			return New(key)
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("secrets: create key: %w", err)
		}
		// Another process created it first: use its key.
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("secrets: read key: %w", err)
	}
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("secrets: key file %s has mode %v; run chmod 600 on it", path, info.Mode().Perm())
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("secrets: key file %s is not hex: %w", path, err)
	}
	return New(key)
}

// Seal encrypts plain, bound to context.
func (s *Sealer) Seal(plain, context string) (string, error) {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	out := s.aead.Seal(nonce, nonce, []byte(plain), []byte(context))
	return prefix + base64.RawStdEncoding.EncodeToString(out), nil
}

// Open decrypts a value Seal made with the same context.
func (s *Sealer) Open(sealed, context string) (string, error) {
	body, ok := strings.CutPrefix(sealed, prefix)
	if !ok {
		return "", errors.New("secrets: not a sealed value")
	}
	raw, err := base64.RawStdEncoding.DecodeString(body)
	if err != nil || len(raw) < s.aead.NonceSize() {
		return "", errors.New("secrets: sealed value is damaged")
	}
	n := s.aead.NonceSize()
	plain, err := s.aead.Open(nil, raw[:n], raw[n:], []byte(context))
	if err != nil {
		return "", errors.New("secrets: sealed value does not open with this key (wrong key file, or moved to another resource)")
	}
	return string(plain), nil
}
