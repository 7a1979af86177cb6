// Command evidock_interop checks evidock's checkpoints, trees and proofs with
// Go's golang.org/x/mod/sumdb/note and sumdb/tlog, the independent
// implementations design.md names, and signs a note for evidock to verify.
//
// Usage: evidock_interop INPUT.json > OUTPUT.json
//
// It exits 1 with a message on stderr at the first thing that does not check
// out. Built offline by tests/integration/test_go_interop.py with
// GO111MODULE=off GOPATH=/usr/share/gocode (Debian golang-golang-x-mod-dev).
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

type inclusion struct {
	Index int64    `json:"index"`
	Size  int64    `json:"size"`
	Proof []string `json:"proof"`
}

type consistency struct {
	Old   int64    `json:"old"`
	New   int64    `json:"new"`
	Proof []string `json:"proof"`
}

type input struct {
	Vkey        string        `json:"vkey"`
	Origin      string        `json:"origin"`
	Checkpoints []string      `json:"checkpoints"`
	Leaves      []string      `json:"leaves"`
	Inclusion   []inclusion   `json:"inclusion"`
	Consistency []consistency `json:"consistency"`
}

type root struct {
	Size int64  `json:"size"`
	Root string `json:"root"`
}

type goKey struct {
	Vkey string `json:"vkey"`
	Skey string `json:"skey"`
}

type output struct {
	CheckpointsVerified int           `json:"checkpoints_verified"`
	InclusionChecked    int           `json:"inclusion_checked"`
	ConsistencyChecked  int           `json:"consistency_checked"`
	Roots               []root        `json:"roots"`
	Inclusion           []inclusion   `json:"inclusion"`
	Consistency         []consistency `json:"consistency"`
	GoNote              string        `json:"go_note"`
	GoText              string        `json:"go_text"`
	GoKeys              []goKey       `json:"go_keys"`
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "evidock_interop: "+format+"\n", args...)
	os.Exit(1)
}

func b64(h tlog.Hash) string { return base64.StdEncoding.EncodeToString(h[:]) }

func hashes(what string, list []string) []tlog.Hash {
	out := make([]tlog.Hash, len(list))
	for i, s := range list {
		raw, err := base64.StdEncoding.DecodeString(s)
		if err != nil || len(raw) != tlog.HashSize {
			fail("%s: element %d is not a base64 SHA-256 hash", what, i)
		}
		copy(out[i][:], raw)
	}
	return out
}

func strs(list []tlog.Hash) []string {
	out := make([]string, len(list))
	for i, h := range list {
		out[i] = b64(h)
	}
	return out
}

// parseCheckpoint reads a c2sp.org/tlog-checkpoint body by hand:
// tlog.ParseTree insists on the "go.sum database tree" origin line.
func parseCheckpoint(text string) (origin string, size int64, hash tlog.Hash) {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 4 {
		fail("checkpoint body %q: want origin, size and root lines", text)
	}
	origin = lines[0]
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		fail("checkpoint body %q: bad size line", text)
	}
	raw, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(raw) != tlog.HashSize {
		fail("checkpoint body %q: bad root line", text)
	}
	copy(hash[:], raw)
	return origin, size, hash
}

func flip(h tlog.Hash) tlog.Hash {
	h[len(h)-1] ^= 1
	return h
}

// genKeys returns two fresh keys: one whose verifier key's base64 holds a '+'
// (a parser splitting on every '+' breaks on it) and one whose does not.
func genKeys(name string) []goKey {
	var with, without *goKey
	for i := 0; i < 10000 && (with == nil || without == nil); i++ {
		skey, vkey, err := note.GenerateKey(rand.Reader, name)
		if err != nil {
			fail("note.GenerateKey: %v", err)
		}
		k := goKey{Vkey: vkey, Skey: skey}
		parts := strings.SplitN(vkey, "+", 3)
		if strings.Contains(parts[2], "+") {
			if with == nil {
				with = &k
			}
		} else if without == nil {
			without = &k
		}
	}
	if with == nil || without == nil {
		fail("could not generate the wanted keys")
	}
	return []goKey{*with, *without}
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: evidock_interop INPUT.json")
	}
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		fail("%v", err)
	}
	var in input
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		fail("reading %s: %v", os.Args[1], err)
	}

	// The tree, built by tlog from the entry bytes alone.
	var stored []tlog.Hash
	reader := tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(indexes))
		for i, x := range indexes {
			if x < 0 || x >= int64(len(stored)) {
				return nil, fmt.Errorf("no stored hash %d", x)
			}
			out[i] = stored[x]
		}
		return out, nil
	})
	leaves := make([][]byte, len(in.Leaves))
	for i, s := range in.Leaves {
		leaf, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			fail("leaf %d: %v", i, err)
		}
		leaves[i] = leaf
		hs, err := tlog.StoredHashes(int64(i), leaf, reader)
		if err != nil {
			fail("tlog.StoredHashes(%d): %v", i, err)
		}
		stored = append(stored, hs...)
	}
	treeHash := func(n int64) tlog.Hash {
		if n < 1 || n > int64(len(leaves)) {
			fail("tree size %d is outside the %d leaves given", n, len(leaves))
		}
		h, err := tlog.TreeHash(n, reader)
		if err != nil {
			fail("tlog.TreeHash(%d): %v", n, err)
		}
		return h
	}

	var out output
	sizes := map[int64]bool{}

	// Checkpoints: signed notes by the given key, roots equal to tlog's.
	verifier, err := note.NewVerifier(in.Vkey)
	if err != nil {
		fail("note.NewVerifier(%q): %v", in.Vkey, err)
	}
	for i, cp := range in.Checkpoints {
		n, err := note.Open([]byte(cp), note.VerifierList(verifier))
		if err != nil {
			fail("open checkpoint %d: %v", i, err)
		}
		if len(n.Sigs) != 1 || n.Sigs[0].Name != verifier.Name() || n.Sigs[0].Hash != verifier.KeyHash() {
			fail("checkpoint %d: not signed by %s", i, in.Vkey)
		}
		origin, size, hash := parseCheckpoint(n.Text)
		if origin != in.Origin {
			fail("checkpoint %d: origin %q, want %q", i, origin, in.Origin)
		}
		if want := treeHash(size); hash != want {
			fail("checkpoint %d: root %s for size %d, but tlog computes %s", i, b64(hash), size, b64(want))
		}
		sizes[size] = true
		out.CheckpointsVerified++
	}

	// evidock's inclusion proofs, checked by tlog; and tlog's own.
	for _, c := range in.Inclusion {
		proof := tlog.RecordProof(hashes("inclusion proof", c.Proof))
		th := treeHash(c.Size)
		if c.Index < 0 || c.Index >= int64(len(leaves)) {
			fail("inclusion: leaf %d is not among the %d leaves", c.Index, len(leaves))
		}
		leaf := tlog.RecordHash(leaves[c.Index])
		if err := tlog.CheckRecord(proof, c.Size, th, c.Index, leaf); err != nil {
			fail("inclusion proof for leaf %d in size %d rejected by tlog.CheckRecord: %v", c.Index, c.Size, err)
		}
		// The check must be able to fail.
		if tlog.CheckRecord(proof, c.Size, th, c.Index, flip(leaf)) == nil {
			fail("tlog.CheckRecord accepted a wrong leaf for %d in size %d", c.Index, c.Size)
		}
		if len(proof) > 0 {
			bad := append(tlog.RecordProof{}, proof...)
			bad[0] = flip(bad[0])
			if tlog.CheckRecord(bad, c.Size, th, c.Index, leaf) == nil {
				fail("tlog.CheckRecord accepted a corrupted proof for %d in size %d", c.Index, c.Size)
			}
		}
		mine, err := tlog.ProveRecord(c.Size, c.Index, reader)
		if err != nil {
			fail("tlog.ProveRecord(%d, %d): %v", c.Size, c.Index, err)
		}
		out.Inclusion = append(out.Inclusion, inclusion{c.Index, c.Size, strs(mine)})
		sizes[c.Size] = true
		out.InclusionChecked++
	}

	// evidock's consistency proofs, checked by tlog; and tlog's own.
	for _, c := range in.Consistency {
		proof := tlog.TreeProof(hashes("consistency proof", c.Proof))
		oldHash, newHash := treeHash(c.Old), treeHash(c.New)
		if err := tlog.CheckTree(proof, c.New, newHash, c.Old, oldHash); err != nil {
			fail("consistency proof %d -> %d rejected by tlog.CheckTree: %v", c.Old, c.New, err)
		}
		if tlog.CheckTree(proof, c.New, newHash, c.Old, flip(oldHash)) == nil {
			fail("tlog.CheckTree accepted a wrong old root for %d -> %d", c.Old, c.New)
		}
		if len(proof) > 0 {
			bad := append(tlog.TreeProof{}, proof...)
			bad[len(bad)-1] = flip(bad[len(bad)-1])
			if tlog.CheckTree(bad, c.New, newHash, c.Old, oldHash) == nil {
				fail("tlog.CheckTree accepted a corrupted proof for %d -> %d", c.Old, c.New)
			}
		}
		mine, err := tlog.ProveTree(c.New, c.Old, reader)
		if err != nil {
			fail("tlog.ProveTree(%d, %d): %v", c.New, c.Old, err)
		}
		out.Consistency = append(out.Consistency, consistency{c.Old, c.New, strs(mine)})
		sizes[c.Old], sizes[c.New] = true, true
		out.ConsistencyChecked++
	}

	var sorted []int64
	for s := range sizes {
		sorted = append(sorted, s)
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	for _, s := range sorted {
		out.Roots = append(out.Roots, root{s, b64(treeHash(s))})
	}

	// A note signed by Go, for evidock to verify: a checkpoint of the same tree
	// under another origin, signed by two fresh keys.
	n := int64(len(leaves))
	out.GoText = fmt.Sprintf("go.example/interop\n%d\n%s\n", n, b64(treeHash(n)))
	out.GoKeys = genKeys("go.example/interop")
	var signers []note.Signer
	for _, k := range out.GoKeys {
		s, err := note.NewSigner(k.Skey)
		if err != nil {
			fail("note.NewSigner: %v", err)
		}
		signers = append(signers, s)
	}
	msg, err := note.Sign(&note.Note{Text: out.GoText}, signers...)
	if err != nil {
		fail("note.Sign: %v", err)
	}
	out.GoNote = string(msg)

	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(out); err != nil {
		fail("writing output: %v", err)
	}
}
