// Command installer-oracle computes layers with Talos's own code
// (pkg/imager/filemap, what outInstaller builds the installer's artifacts
// and overlay layers with), for builder/installer's differential test.
//
// It reads one JSON request from stdin:
//
//	{"files": [{"imagePath": "usr/install/amd64/vmlinuz.efi", "sourcePath": "/tmp/uki", "imageMode": 0}],
//	 "walks": [{"source": "/tmp/overlay/artifacts", "image": "overlay/artifacts"}]}
//
// gathers the files and the filemap.Walk of every walk, as outInstaller
// does, and prints {"digest", "diffID", "size"} of filemap.Layer over them.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/siderolabs/talos/pkg/imager/filemap"
)

type request struct {
	Files []filemap.File `json:"files"`
	Walks []struct {
		Source string `json:"source"`
		Image  string `json:"image"`
	} `json:"walks"`
}

type response struct {
	Digest string `json:"digest"`
	DiffID string `json:"diffID"`
	Size   int64  `json:"size"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "installer-oracle:", err)
		os.Exit(1)
	}
}

func run() error {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		return err
	}

	files := req.Files

	for _, w := range req.Walks {
		walked, err := filemap.Walk(w.Source, w.Image)
		if err != nil {
			return err
		}

		files = append(files, walked...)
	}

	l, err := filemap.Layer(files)
	if err != nil {
		return err
	}

	digest, err := l.Digest()
	if err != nil {
		return err
	}

	diffID, err := l.DiffID()
	if err != nil {
		return err
	}

	size, err := l.Size()
	if err != nil {
		return err
	}

	return json.NewEncoder(os.Stdout).Encode(response{Digest: digest.String(), DiffID: diffID.String(), Size: size})
}
