// Command store is the example fleet's bottom service: an in-memory
// counter served on $PORT.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"sync/atomic"
)

func main() {
	var hits atomic.Int64
	http.HandleFunc("/hit", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d\n", hits.Add(1))
	})
	log.Printf("store %s listening on :%s", os.Getenv("INSTANCE"), os.Getenv("PORT"))
	log.Fatal(http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), nil))
}
