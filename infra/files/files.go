// Package files writes the small private files of the data directory (keys,
// tokens) so that a reader never sees half of one.
package files

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteNew creates path with mode and data, failing if it exists: of two
// processes creating the same file, exactly one wins.
func WriteNew(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	return finish(f, data)
}

// WriteAtomic replaces path with data through a temporary file and a
// rename.
func WriteAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := finish(f, data); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// finish writes data, syncs and closes f.
func finish(f *os.File, data []byte) error {
	_, err := f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", f.Name(), err)
	}
	return nil
}
