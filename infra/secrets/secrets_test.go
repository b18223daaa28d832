package secrets_test

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/orchestra-fleet/orchestra/infra/secrets"
)

func key(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }

func newSealer(t *testing.T, k []byte) *secrets.Sealer {
	t.Helper()
	s, err := secrets.New(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRoundTrip(t *testing.T) {
	s := newSealer(t, key(1))
	for _, plain := range []string{"", "s3cret-PLAIN-value", "it's \"quoted\"\n$(id)", strings.Repeat("x", 4096), "\x00\xff"} {
		sealed, err := s.Seal(plain, "db/orders#pw")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(sealed, "sealed:v1:") {
			t.Fatalf("sealed value %q", sealed)
		}
		if plain != "" && strings.Contains(sealed, plain) {
			t.Fatalf("the sealed value holds the plain text: %q", sealed)
		}
		got, err := s.Open(sealed, "db/orders#pw")
		if err != nil || got != plain {
			t.Fatalf("Open = %q, %v; want %q", got, err, plain)
		}
		again, _ := s.Seal(plain, "db/orders#pw")
		if again == sealed {
			t.Fatal("sealing twice gives the same value: the nonce is not random")
		}
	}
}

func TestOpenRefuses(t *testing.T) {
	s := newSealer(t, key(1))
	sealed, err := s.Seal("s3cret", "db/orders#pw")
	if err != nil {
		t.Fatal(err)
	}
	flipped := []byte(sealed)
	i := len("sealed:v1:") + 20
	flipped[i] = map[bool]byte{true: 'B', false: 'A'}[flipped[i] == 'A']
	for _, tc := range []struct {
		name, sealed, context string
		sealer                *secrets.Sealer
		words                 string
	}{
		{"wrong context: other key", sealed, "db/orders#token", s, "does not open"},
		{"wrong context: other resource", sealed, "db/payments#pw", s, "does not open"},
		{"wrong key", sealed, "db/orders#pw", newSealer(t, key(2)), "does not open"},
		{"damaged", string(flipped), "db/orders#pw", s, ""},
		{"truncated", sealed[:len(sealed)-4], "db/orders#pw", s, ""},
		{"too short", "sealed:v1:AAAA", "db/orders#pw", s, "damaged"},
		{"not base64", "sealed:v1:!!!!", "db/orders#pw", s, "damaged"},
		{"not sealed", "s3cret", "db/orders#pw", s, "not a sealed value"},
		{"other scheme", strings.Replace(sealed, "v1", "v2", 1), "db/orders#pw", s, "not a sealed value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.sealer.Open(tc.sealed, tc.context)
			if err == nil {
				t.Fatalf("Open = %q, want an error", got)
			}
			if !strings.Contains(err.Error(), tc.words) {
				t.Fatalf("error %q does not say %q", err, tc.words)
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Fatalf("the error shows the secret: %v", err)
			}
		})
	}
}

func TestNewRefusesBadKeys(t *testing.T) {
	for _, n := range []int{0, 16, 31, 33, 64} {
		if _, err := secrets.New(make([]byte, n)); err == nil || !strings.Contains(err.Error(), "32") {
			t.Errorf("New(%d bytes) = %v, want an error", n, err)
		}
	}
}

func TestLoadOrCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "secret.key")
	first, err := secrets.LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Fatalf("key file mode %v, want 0600", perm)
	}
	if dir, _ := os.Stat(filepath.Dir(path)); dir.Mode().Perm()&0o077 != 0 {
		t.Fatalf("key directory mode %v lets others in", dir.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if k, err := hex.DecodeString(strings.TrimSpace(string(data))); err != nil || len(k) != 32 || bytes.Equal(k, make([]byte, 32)) {
		t.Fatalf("key file holds %q", data)
	}

	sealed, err := first.Seal("s3cret", "ctx")
	if err != nil {
		t.Fatal(err)
	}
	second, err := secrets.LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := second.Open(sealed, "ctx"); err != nil || got != "s3cret" {
		t.Fatalf("the reloaded key opens %q, %v", got, err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, data) {
		t.Fatal("loading rewrote the key file")
	}

	// Another data dir gets another key.
	other, err := secrets.LoadOrCreate(filepath.Join(t.TempDir(), "secret.key"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Open(sealed, "ctx"); err == nil {
		t.Fatal("a new key opens the old key's secrets")
	}
}

func TestLoadOrCreateRefuses(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // regardless of the umask
			t.Fatal(err)
		}
		return p
	}
	good := hex.EncodeToString(key(7)) + "\n"
	for _, tc := range []struct {
		name, content string
		mode          os.FileMode
		words         string
	}{
		{"world readable", good, 0o644, "chmod 600"},
		{"group readable", good, 0o640, "chmod 600"},
		{"not hex", "not a key\n", 0o600, "not hex"},
		{"short key", hex.EncodeToString(key(7)[:16]), 0o600, "32"},
		{"empty", "", 0o600, "32"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := write(strings.ReplaceAll(tc.name, " ", "-"), tc.content, tc.mode)
			_, err := secrets.LoadOrCreate(p)
			if err == nil || !strings.Contains(err.Error(), tc.words) {
				t.Fatalf("LoadOrCreate = %v, want an error saying %q", err, tc.words)
			}
			if strings.Contains(err.Error(), strings.TrimSpace(good)) {
				t.Fatalf("the error shows the key: %v", err)
			}
		})
	}
	t.Run("a 0600 file is loaded", func(t *testing.T) {
		p := write("ok", good, 0o600)
		s, err := secrets.LoadOrCreate(p)
		if err != nil {
			t.Fatal(err)
		}
		sealed, _ := newSealer(t, key(7)).Seal("x", "c")
		if got, err := s.Open(sealed, "c"); err != nil || got != "x" {
			t.Fatalf("%q, %v", got, err)
		}
	})
	t.Run("a directory in the way", func(t *testing.T) {
		p := filepath.Join(dir, "isdir")
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := secrets.LoadOrCreate(p); err == nil {
			t.Fatal("a directory loaded as a key")
		}
	})
}
