// The seed's stack doing voicebridge's echo job: Fastify + @fastify/websocket on /twilio-media.
// Written the way a Twilio Media Streams app is usually written: parse each message, answer
// every `media` with a `media` carrying the same audio, close on `stop`.
'use strict'

const fastify = require('fastify')({ logger: false })

fastify.register(require('@fastify/websocket'), { options: { maxPayload: 65536 } })

fastify.register(async function (app) {
  app.get('/twilio-media', { websocket: true }, (socket) => {
    let streamSid = null
    socket.on('message', (data, isBinary) => {
      if (isBinary) return
      let msg
      try {
        msg = JSON.parse(data)
      } catch (e) {
        return
      }
      switch (msg.event) {
        case 'start':
          streamSid = msg.start.streamSid
          break
        case 'media':
          socket.send(JSON.stringify({ event: 'media', streamSid, media: { payload: msg.media.payload } }))
          break
        case 'stop':
          socket.close(1000, 'stream stopped')
          break
      }
    })
  })
})

fastify.get('/healthz', async () => 'ok\n')

const port = Number(process.env.PORT || 8090)
fastify.listen({ port, host: process.env.HOST || '127.0.0.1' }, (err, address) => {
  if (err) {
    console.error(err)
    process.exit(1)
  }
  console.log(`fastify echo listening on ${address}`)
})
